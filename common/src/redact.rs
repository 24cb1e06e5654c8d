//! URLs as they may be shown: in logs, metrics labels, error messages and
//! dead letters. A URL may carry a secret in its user part
//! (`nats://user:password@host`, `nats://TOKEN@host`,
//! `https://user:password@sensor`), which both NATS clients and HTTP clients
//! honour; what an operator reads must not. The password becomes `***`, and
//! so does a NATS user part with no password, which NATS takes as a token.
//! A query parameter named like a secret (`?token=`, `access_token`,
//! `api_key`, `sig`, Azure Functions' `code`: webhooks often take their key
//! there) has its value hidden too. The rest (scheme, host, port, path, other
//! parameters) is kept: it is what tells one destination from another.

/// The endings of query parameter names (lower-cased, without `-`, `_`, `.`)
/// whose values are secrets.
const SECRET_PARAMS: [&str; 11] = [
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "sig",
    "signature",
    "auth",
    "credential",
    "code",
];

/// `url` with the secrets in its user part and query hidden.
pub fn url(url: &str) -> String {
    let shown = user_part_hidden(url);
    match shown.split_once('?') {
        Some((base, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query.split('&').map(param_hidden).collect();
            let mut out = format!("{base}?{}", query.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
            out
        }
        None => shown,
    }
}

/// `name=value`, its value `***` when the name is a secret's.
fn param_hidden(param: &str) -> String {
    let Some((name, value)) = param.split_once('=') else {
        return param.to_owned();
    };
    let plain: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if value.is_empty() || !SECRET_PARAMS.iter().any(|s| plain.ends_with(s)) {
        return param.to_owned();
    }
    format!("{name}=***")
}

/// `url` with the secret in its user part hidden.
fn user_part_hidden(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let after = scheme_end + 3;
    let authority_end = url[after..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after + i);
    let authority = &url[after..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let user_part = &authority[..at];
    let shown = match user_part.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None if is_http(&url[..scheme_end]) => user_part.to_owned(),
        // A NATS URL's lone user part is a token.
        None => "***".to_owned(),
    };
    format!("{}{shown}{}", &url[..after], &url[after + at..])
}

/// A comma-separated list of URLs (`NATS_URL`), each with [`url`].
pub fn urls(list: &str) -> String {
    list.split(',')
        .map(|u| {
            let lead = u.len() - u.trim_start().len();
            format!("{}{}", &u[..lead], url(u.trim_start()))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn is_http(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_hidden_the_rest_kept() {
        assert_eq!(
            url("nats://bob:pw2@127.0.0.1:4222"),
            "nats://bob:***@127.0.0.1:4222"
        );
        assert_eq!(url("nats://s3cr3tt0ken@h:4222"), "nats://***@h:4222");
        assert_eq!(
            url("http://alice:s3cret@127.0.0.1:1/path?q=a@b"),
            "http://alice:***@127.0.0.1:1/path?q=a@b"
        );
        assert_eq!(url("https://alice@sensor/"), "https://alice@sensor/");
        assert_eq!(url("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(url("nats://h:4222"), "nats://h:4222");
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(url("tls://u:p:q@h"), "tls://u:***@h");
        assert_eq!(url("nats://a:b@c@h"), "nats://a:***@h");
    }

    #[test]
    fn query_parameters_named_like_secrets_are_hidden() {
        assert_eq!(
            url("http://h:1/hook?token=abc&id=7&X-Api-Key=k#top"),
            "http://h:1/hook?token=***&id=7&X-Api-Key=***#top"
        );
        assert_eq!(
            url("https://fn.azurewebsites.net/api/f?code=s3cret&name=x"),
            "https://fn.azurewebsites.net/api/f?code=***&name=x"
        );
        assert_eq!(
            url("https://acct.blob/x?sv=2024&sig=abc%2F&access_token="),
            "https://acct.blob/x?sv=2024&sig=***&access_token="
        );
        assert_eq!(url("http://h/?monkeys=3&q"), "http://h/?monkeys=3&q");
        assert_eq!(
            url("http://alice:pw@h/?auth=x"),
            "http://alice:***@h/?auth=***"
        );
    }

    #[test]
    fn lists_keep_their_shape() {
        assert_eq!(
            urls("nats://a:1, nats://u:p@b:2,nats://t@c:3"),
            "nats://a:1, nats://u:***@b:2,nats://***@c:3"
        );
    }
}
