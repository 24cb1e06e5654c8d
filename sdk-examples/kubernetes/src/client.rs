//! The connection to the API server, and the first look a configuration
//! takes before its start is answered: one list of at most one object, with
//! its selectors, tells a server away (try again later) from one that has no
//! such resource, refuses the gateway's credentials or RBAC, or the
//! selectors (the configuration is in Error, with the server's words).

use gateway_sdk::Unready;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::Client;

use crate::spec::Spec;

/// The configuration's objects, namespaced or across namespaces.
pub fn api(client: Client, spec: &Spec) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: spec.group.clone(),
        version: spec.version.clone(),
        api_version: spec.api_version(),
        kind: String::new(),
        plural: spec.resource.clone(),
    };
    if spec.namespace.is_empty() {
        Api::all_with(client, &resource)
    } else {
        Api::namespaced_with(client, &spec.namespace, &resource)
    }
}

/// The selectors the server applies, as list parameters.
fn list_params(spec: &Spec) -> ListParams {
    let mut lp = ListParams::default();
    if !spec.label_selector.is_empty() {
        lp = lp.labels(&spec.label_selector);
    }
    if !spec.field_selector.is_empty() {
        lp = lp.fields(&spec.field_selector);
    }
    lp
}

/// The first look: `Later` when the server is away or failing (the start is
/// tried again), `Refused` when the configuration cannot work as it is.
pub async fn look(client: Client, spec: &Spec) -> Result<(), Unready> {
    let what = spec.describe();
    match api(client, spec).list(&list_params(spec).limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(match s.code {
            404 => Unready::Refused(format!("the API server has no {what}: {}", s.message)),
            401 => Unready::Refused(format!(
                "the API server refused the gateway's credentials: {}",
                s.message
            )),
            403 => Unready::Refused(format!(
                "the gateway may not list {what}: {}; its service account needs get, list and \
                 watch on them (a Role, or a ClusterRole for every namespace)",
                s.message
            )),
            400 | 422 => Unready::Refused(format!(
                "the API server refused the selectors for {what}: {}",
                s.message
            )),
            _ => Unready::Later(format!("the API server answered {}: {}", s.code, s.message)),
        }),
        Err(e) => Err(Unready::Later(format!(
            "the API server cannot be reached: {e}"
        ))),
    }
}
