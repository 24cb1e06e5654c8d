//! The Kubernetes API server emulator for the tests
//! (`tests/support/kube_apiserver.py`: list and watch, resourceVersions,
//! selectors, bookmarks, 410 Gone; no real kube-apiserver can be installed on
//! these machines), with a kubeconfig file pointing at it, and the calls a
//! test makes to change what it holds.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{free_port, http_client, support, wait_port, Proc};

pub struct KubeApi {
    pub port: u16,
    pub proc: Proc,
    /// A kubeconfig naming the emulator, with its token.
    pub kubeconfig: PathBuf,
}

/// The token the emulator asks for.
pub const KUBE_TOKEN: &str = "emulator-token";

impl KubeApi {
    /// Starts the emulator; `args` are its own (`--forbid pods`, ...).
    pub async fn start(dir: &Path, args: &[&str]) -> KubeApi {
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(support("kube_apiserver.py"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--token")
            .arg(KUBE_TOKEN)
            .args(args);
        let proc = Proc::spawn("kube-apiserver", cmd, dir);
        wait_port(port, "the API server emulator").await;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text(port, KUBE_TOKEN)).expect("write kubeconfig");
        KubeApi {
            port,
            proc,
            kubeconfig,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = http_client()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("emulator answers");
        r.json().await.unwrap_or_default()
    }

    /// Creates or updates an object of `resource` (`metadata.name`,
    /// `metadata.namespace`, labels, annotations, anything else); returns it
    /// as stored (with uid and resourceVersion).
    pub async fn apply(&self, resource: &str, mut object: Value) -> Value {
        object["resource"] = resource.into();
        self.post("/emulator/apply", object).await
    }

    /// Deletes an object; returns it with its last resourceVersion.
    pub async fn delete(&self, resource: &str, namespace: &str, name: &str) -> Value {
        let body = serde_json::json!({"resource": resource, "namespace": namespace, "name": name});
        self.post("/emulator/delete", body).await
    }

    /// Forgets the history: a watch from an older resourceVersion is 410.
    pub async fn compact(&self) {
        self.post("/emulator/compact", Value::Null).await;
    }

    /// Ends every open watch.
    pub async fn cut(&self) {
        self.post("/emulator/cut", Value::Null).await;
    }

    /// Ends every open watch and keeps new ones waiting (the watch down)
    /// until [`KubeApi::release`].
    pub async fn hold(&self) {
        self.post("/emulator/hold", Value::Null).await;
    }

    pub async fn release(&self) {
        self.post("/emulator/release", Value::Null).await;
    }

    /// Watches asked for so far.
    pub async fn watches(&self) -> Vec<Value> {
        let mut all = self.requests().await;
        all.retain(|r| r["query"]["watch"] == "true");
        all
    }

    /// What was asked of the API, in order: `{path, query}`.
    pub async fn requests(&self) -> Vec<Value> {
        http_client()
            .get(self.url("/emulator/requests"))
            .send()
            .await
            .expect("emulator answers")
            .json()
            .await
            .unwrap_or_default()
    }
}

/// A kubeconfig for the server on `port` with a bearer token.
pub fn kubeconfig_text(port: u16, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n\
         clusters:\n- name: emulator\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
         users:\n- name: gateway\n  user: {{token: {token}}}\n\
         contexts:\n- name: emulator\n  context: {{cluster: emulator, user: gateway, namespace: default}}\n"
    )
}
