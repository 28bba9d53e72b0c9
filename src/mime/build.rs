use rand::Rng;

/// A boundary that cannot occur in armored data or base64 (it contains `=_` and a dot).
pub fn new_boundary() -> String {
    let mut rng = rand::thread_rng();
    let n: u128 = rng.gen();
    format!("=_listcrypt.{n:032x}")
}

/// RFC 3156 §4: (Content-Type value, body) of a multipart/encrypted message around `armored`.
pub fn multipart_encrypted(armored: &[u8]) -> (String, Vec<u8>) {
    let boundary = new_boundary();
    let content_type = format!(
        "multipart/encrypted; protocol=\"application/pgp-encrypted\";\n\tboundary=\"{boundary}\""
    );
    let mut body = Vec::with_capacity(armored.len() + armored.len() / 32 + 512);
    body.extend_from_slice(b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n");
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Type: application/pgp-encrypted\r\n");
    body.extend_from_slice(b"Content-Description: PGP/MIME version identification\r\n\r\n");
    body.extend_from_slice(b"Version: 1\r\n\r\n");
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n");
    body.extend_from_slice(b"Content-Description: OpenPGP encrypted message\r\n");
    body.extend_from_slice(b"Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n");
    super::parse::to_crlf_into(armored, &mut body);
    if !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (content_type, body)
}
