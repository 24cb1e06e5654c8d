//! Certificates for the TLS tests, made by openssl: a private CA, a server
//! certificate for 127.0.0.1 it signed, and a client certificate.

/// A private CA and a server certificate for 127.0.0.1 it signed, made by openssl.
pub fn private_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=gateway test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    issue(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A key (`NAME.key`) and a certificate (`NAME.pem`) for `subject`, signed by
/// the CA in `dir` with the extensions `ext`.
fn issue(dir: &std::path::Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, pem, ext_file) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ],
    );
    std::fs::write(dir.join(&ext_file), ext).expect("extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ],
    );
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    crate::run_ok(
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir),
        &format!("openssl {args:?}"),
    );
}

/// A client certificate signed by the CA that [`private_ca`] made in `dir`, for
/// mutual TLS.
pub fn client_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    issue(
        dir,
        "client",
        "/CN=gateway",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    (dir.join("client.pem"), dir.join("client.key"))
}
