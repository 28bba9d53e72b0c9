//! The encrypted archive: every post a list distributes, encrypted to the list's archive key
//! (whose secret stays off the list host) and kept in an mboxrd file or sent to an address;
//! and `archive decrypt`, which turns such an mbox back into a plain one for HyperKitty.

use crate::keys::{list_dir, KeyHome};
use crate::pgp::{self, Cert, KeyError};
use std::io::{BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The outer header naming the post's archive digest: `archive decrypt` keeps the first of
/// entries that carry the same one (a crash between the append and its store record).
pub const DIGEST_HEADER: &str = "X-Listcrypt-Archive";

/// Archive records outlive Mailman's retry period (5 days) by far: a late retry of a post
/// finds its record.
pub const RECORD_RETENTION_SECS: u64 = 90 * 24 * 3600;

/// The largest entry `archive decrypt` reads: an encrypted copy of the largest post
/// (`limits.max_outbound_copy_bytes`' default, 40 MiB) with room to spare.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "{0}: archiving is on but the list has no archive key (listcrypt list archive-key import)"
    )]
    NoKey(String),
    #[error("{0}: archive = \"address\" without archive_address")]
    NoAddress(String),
    #[error("archive key: {0}")]
    Key(#[from] KeyError),
    #[error("state store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot encrypt to the archive key: {0}")]
    Encrypt(#[from] pgp::EncryptError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("archive entry {0}: {1}")]
    Entry(usize, String),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Whether Mailman distributes `message` as a list post: its posting chain stamps
/// `X-Mailman-Rule-Hits`/`-Misses` on every post it accepts, while digests and notices are new
/// messages without them. A post's own `Precedence` or `Auto-Submitted` (which Mailman keeps)
/// does not matter: an author must not keep a post out of the archive.
pub fn is_post(message: &[u8]) -> bool {
    let Ok(e) = crate::mime::Entity::parse(message) else {
        return false;
    };
    e.get("X-Mailman-Rule-Misses").is_some() || e.get("X-Mailman-Rule-Hits").is_some()
}

/// The key under which a post is archived once: its Message-ID, which Mailman keeps on every
/// transaction of one post, even when personalization gives each member another footer (and
/// HyperKitty keeps one message per Message-ID anyway). Without one: the whole message.
pub fn post_digest(message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"listcrypt archive\0");
    let id = crate::mime::Entity::parse(message)
        .ok()
        .and_then(|e| e.get("Message-ID").map(crate::mime::header_text))
        .filter(|id| !id.trim().is_empty());
    match id {
        Some(id) => h.update(id.trim().as_bytes()),
        None => h.update(message),
    }
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `keyring_dir/lists/LIST/archive.pgp` on a one-host site.
pub fn key_path(keyring_dir: &Path, list: &str) -> PathBuf {
    list_dir(keyring_dir, list).join("archive.pgp")
}

/// The list's archive certificate, if one was imported.
pub fn load_key(home: KeyHome<'_>, list: &str) -> Result<Option<Cert>, ArchiveError> {
    let bytes = match home {
        KeyHome::Files(dir) => {
            let path = key_path(dir, list);
            match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        KeyHome::Database(store) => match store.archive_key_get(list).map_err(KeyError::from)? {
            Some(b) => b,
            None => return Ok(None),
        },
    };
    Ok(Some(parse_key(&bytes, list)?))
}

/// One public certificate with a usable encryption key; secrets are refused, since the
/// archive key's secret must never be on the list host.
pub fn parse_key(bytes: &[u8], what: &str) -> Result<Cert, KeyError> {
    let mut certs = pgp::parse_certs(bytes);
    let (Some(cert), None) = (certs.next(), certs.next()) else {
        return Err(KeyError::Unusable(format!(
            "{what}: expected exactly one OpenPGP certificate"
        )));
    };
    if cert.is_tsk() {
        return Err(KeyError::Unusable(format!(
            "{what}: holds secret key material; import only the public certificate (the \
             archive's secret key stays off the list host)"
        )));
    }
    pgp::encrypt_sign(b"", &[recipient(&cert, false)], None)
        .map_err(|e| KeyError::Unusable(format!("{what}: {e}")))?;
    Ok(cert)
}

fn recipient(cert: &Cert, show_key_id: bool) -> pgp::BatchRecipient<'_> {
    pgp::BatchRecipient { cert, show_key_id }
}

/// Stores (`Some`) or removes (`None`) the list's archive certificate.
pub fn store_key(home: KeyHome<'_>, list: &str, cert: Option<&Cert>) -> Result<(), ArchiveError> {
    let bytes = cert
        .map(pgp::binary_public)
        .transpose()
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    match home {
        KeyHome::Database(store) => store
            .archive_key_put(list, bytes.as_deref())
            .map_err(|e| KeyError::from(e).into()),
        KeyHome::Files(dir) => {
            let path = key_path(dir, list);
            match bytes {
                Some(b) => crate::atomic_file::write(&path, &b, 0o644).map_err(io_err(&path)),
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
                    _ => Ok(()),
                },
            }
        }
    }
}

/// The archive entry of `post`: a PGP/MIME message from the list whose encrypted content is
/// the post exactly as Mailman sent it, signed by the list key when the list signs its copies.
pub fn seal(
    post: &[u8],
    list: &pgp::ListKeys,
    archive: &Cert,
    digest: &[u8; 32],
) -> Result<Vec<u8>, ArchiveError> {
    let signer = list.policy.sign_outgoing.then_some(&list.secret);
    let show = !list.policy.hide_recipient_key_ids;
    let armored = pgp::encrypt_sign(post, &[recipient(archive, show)], signer)?;
    let (content_type, body) = crate::mime::multipart_encrypted(&armored);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut out = format!(
        "From: <{list}>\r\nTo: <{list}>\r\nSubject: archived post\r\nDate: {date}\r\n\
         {DIGEST_HEADER}: {digest}\r\nMIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n",
        list = list.address,
        date = crate::outbound::rfc5322_date_utc(now),
        digest = hex(digest),
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

/// `<state_dir>/archive/<list>.mbox`.
pub fn mbox_path(state_dir: &Path, list: &str) -> PathBuf {
    state_dir.join("archive").join(format!("{list}.mbox"))
}

/// The mbox of `list`, opened for appending and locked (flock, exclusive) while it is held:
/// the daemon's sessions and any reader that locks see whole entries only.
pub struct LockedMbox {
    path: PathBuf,
    file: nix::fcntl::Flock<std::fs::File>,
}

impl LockedMbox {
    pub fn open(state_dir: &Path, list: &str) -> Result<LockedMbox, ArchiveError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let path = mbox_path(state_dir, list);
        let dir = state_dir.join("archive");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        // A file an admin created by hand may be wider.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&path))?;
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err(&path)(std::io::Error::from(errno)))?;
        Ok(LockedMbox { path, file })
    }

    /// Appends one entry (mboxrd) and syncs it to disk; a failed write is cut off again, so
    /// the mbox never holds half an entry.
    pub fn append(&mut self, sender: &str, entry: &[u8]) -> Result<(), ArchiveError> {
        let before = self
            .file
            .seek(std::io::SeekFrom::End(0))
            .map_err(self.err())?;
        let bytes = mboxrd_entry(sender, std::time::SystemTime::now(), entry);
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(before);
            let _ = self.file.sync_data();
            return Err(self.err()(e));
        }
        Ok(())
    }

    fn err(&self) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
        io_err(&self.path)
    }
}

/// One mboxrd entry: the `From ` line, the message with LF line ends and every line that
/// matches `>*From ` quoted with one more `>`, and a blank line after it.
pub fn mboxrd_entry(sender: &str, at: std::time::SystemTime, message: &[u8]) -> Vec<u8> {
    mbox_entry(sender, at, message, true)
}

/// One mboxo entry, as Python's `mailbox.mbox` (and so `hyperkitty_import`) reads and writes
/// them: only lines starting `From ` get a `>`, since Python never removes one on reading.
pub fn mboxo_entry(sender: &str, at: std::time::SystemTime, message: &[u8]) -> Vec<u8> {
    mbox_entry(sender, at, message, false)
}

fn mbox_entry(sender: &str, at: std::time::SystemTime, message: &[u8], rd: bool) -> Vec<u8> {
    let date = chrono::DateTime::<chrono::Utc>::from(at).format("%a %b %e %H:%M:%S %Y");
    let sender = if sender.is_empty() || sender.contains(char::is_whitespace) {
        "MAILER-DAEMON"
    } else {
        sender
    };
    let mut out = format!("From {sender} {date}\n").into_bytes();
    out.reserve(message.len() + message.len() / 32 + 2);
    for line in message.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        let quoted = match rd {
            true => body.iter().position(|&b| b != b'>'),
            false => Some(0),
        };
        if quoted.is_some_and(|i| body[i..].starts_with(b"From ")) {
            out.push(b'>');
        }
        out.extend_from_slice(body);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Reads mboxrd entries one at a time, each unquoted and without its `From ` line or the
/// blank line that ends it, and each at most [`MAX_ENTRY_BYTES`].
pub struct MboxReader<R> {
    input: R,
    /// Inside an entry: its `From ` line was read.
    started: bool,
    index: usize,
}

impl<R: BufRead> MboxReader<R> {
    pub fn new(input: R) -> MboxReader<R> {
        MboxReader {
            input,
            started: false,
            index: 0,
        }
    }

    fn next_entry(&mut self) -> Result<Option<Vec<u8>>, ArchiveError> {
        let mut entry = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let room = (MAX_ENTRY_BYTES + 1 - entry.len()) as u64;
            let n = (&mut self.input)
                .take(room)
                .read_until(b'\n', &mut line)
                .map_err(|e| ArchiveError::Entry(self.index + 1, e.to_string()))?;
            let at_end = n == 0;
            if at_end || line.starts_with(b"From ") {
                let had = self.started;
                self.started = !at_end;
                if had {
                    self.index += 1;
                    // The blank line mboxrd puts between entries is no part of the message.
                    if entry.ends_with(b"\n\n") {
                        entry.pop();
                    }
                    return Ok(Some(entry));
                }
                if at_end {
                    return Ok(None);
                }
                continue;
            }
            if !self.started {
                return Err(ArchiveError::Entry(1, "not an mbox (no From line)".into()));
            }
            if line
                .iter()
                .position(|&b| b != b'>')
                .is_some_and(|i| i > 0 && line[i..].starts_with(b"From "))
            {
                line.remove(0);
            }
            entry.extend_from_slice(&line);
            if entry.len() > MAX_ENTRY_BYTES {
                return Err(ArchiveError::Entry(
                    self.index + 1,
                    "entry too large".into(),
                ));
            }
        }
    }
}

impl<R: BufRead> Iterator for MboxReader<R> {
    type Item = Result<Vec<u8>, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// What `archive decrypt` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decrypted {
    pub posts: usize,
    /// Entries whose digest an earlier entry had (left out).
    pub duplicates: usize,
}

/// Decrypts every entry of an archive mbox with `key` (secrets opened) and writes the posts
/// as a plain mbox in the form Python's `mailbox` reads (mboxo), each once.
pub fn decrypt_mbox(
    input: impl BufRead,
    mut output: impl Write,
    key: &Cert,
) -> Result<Decrypted, ArchiveError> {
    let mut seen = std::collections::HashSet::new();
    let mut done = Decrypted::default();
    for (i, entry) in MboxReader::new(input).enumerate() {
        let entry = entry?;
        let bad = |why: String| ArchiveError::Entry(i + 1, why);
        let parsed = crate::mime::Entity::parse(&entry).map_err(|e| bad(e.to_string()))?;
        if let Some(d) = parsed.get(DIGEST_HEADER).map(crate::mime::header_text) {
            if !seen.insert(d.trim().to_string()) {
                done.duplicates += 1;
                continue;
            }
        }
        let armored =
            armored_message(parsed.body).ok_or_else(|| bad("no OpenPGP message".into()))?;
        let post = decrypt_one(armored, key).map_err(bad)?;
        let out = mboxo_entry("", std::time::SystemTime::now(), &post);
        output
            .write_all(&out)
            .map_err(|e| bad(format!("writing the output: {e}")))?;
        done.posts += 1;
    }
    output
        .flush()
        .map_err(|e| ArchiveError::Entry(0, format!("writing the output: {e}")))?;
    Ok(done)
}

/// The armored OpenPGP message inside an entry's body.
fn armored_message(body: &[u8]) -> Option<&[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----";
    const END: &[u8] = b"-----END PGP MESSAGE-----";
    let start = crate::mime::find(body, BEGIN)?;
    let len = crate::mime::find(&body[start..], END)?;
    Some(&body[start..start + len + END.len()])
}

/// Decrypts one archived post with the archive key. The list's signature inside is not
/// checked here: the archive key's holder reads what the list host wrote.
fn decrypt_one(armored: &[u8], key: &Cert) -> Result<Vec<u8>, String> {
    use sequoia_openpgp::parse::stream::DecryptorBuilder;
    use sequoia_openpgp::parse::Parse;
    let helper = ArchiveHelper { key };
    let mut decryptor = DecryptorBuilder::from_bytes(armored)
        .and_then(|b| b.with_policy(&pgp::POLICY, None, helper))
        .map_err(|e| format!("cannot decrypt: {e}"))?;
    let mut post = Vec::new();
    (&mut decryptor)
        .take(MAX_ENTRY_BYTES as u64 + 1)
        .read_to_end(&mut post)
        .map_err(|e| format!("cannot decrypt: {e}"))?;
    if post.len() > MAX_ENTRY_BYTES || !decryptor.message_processed() {
        return Err("decrypted post too large or truncated".into());
    }
    Ok(post)
}

struct ArchiveHelper<'a> {
    key: &'a Cert,
}

impl sequoia_openpgp::parse::stream::VerificationHelper for ArchiveHelper<'_> {
    fn get_certs(
        &mut self,
        _ids: &[sequoia_openpgp::KeyHandle],
    ) -> sequoia_openpgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }

    fn check(
        &mut self,
        _structure: sequoia_openpgp::parse::stream::MessageStructure,
    ) -> sequoia_openpgp::Result<()> {
        Ok(())
    }
}

impl sequoia_openpgp::parse::stream::DecryptionHelper for ArchiveHelper<'_> {
    fn decrypt(
        &mut self,
        pkesks: &[sequoia_openpgp::packet::PKESK],
        _skesks: &[sequoia_openpgp::packet::SKESK],
        sym_algo: Option<sequoia_openpgp::types::SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(
            Option<sequoia_openpgp::types::SymmetricAlgorithm>,
            &sequoia_openpgp::crypto::SessionKey,
        ) -> bool,
    ) -> sequoia_openpgp::Result<Option<Cert>> {
        use sequoia_openpgp::KeyHandle;
        let flags = sequoia_openpgp::types::KeyFlags::empty()
            .set_transport_encryption()
            .set_storage_encryption();
        let keys: Vec<_> = self
            .key
            .keys()
            .with_policy(&pgp::POLICY, None)
            .secret()
            .key_flags(flags)
            .collect();
        // Wildcard PKESKs (hidden key ids) are tried with every key.
        for pkesk in pkesks {
            for ka in &keys {
                let addressed = pkesk
                    .recipient()
                    .is_none_or(|h| h.aliases(KeyHandle::from(ka.key().fingerprint())));
                let Ok(mut pair) = ka.key().clone().into_keypair() else {
                    continue;
                };
                if addressed {
                    if let Some((algo, sk)) = pkesk.decrypt(&mut pair, sym_algo) {
                        if decrypt(algo, &sk) {
                            return Ok(Some(self.key.clone()));
                        }
                    }
                }
            }
        }
        Err(anyhow::anyhow!("the archive key cannot decrypt this entry"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(mbox: &[u8]) -> Vec<Vec<u8>> {
        MboxReader::new(mbox).collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn mboxrd_quotes_from_lines_and_reads_them_back() {
        // RFC 4155 and the mboxrd convention: every line matching ^>*From gets one more >.
        let message =
            b"Subject: x\r\n\r\nFrom here\r\n>From there\r\n>>From afar\r\nFrom\r\n Fromage\r\n";
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_765_000_000);
        let entry = mboxrd_entry("l-bounces@x.example", t, message);
        let text = String::from_utf8(entry.clone()).unwrap();
        assert_eq!(
            text,
            "From l-bounces@x.example Sat Dec  6 05:46:40 2025\nSubject: x\n\n>From here\n>>From there\n>>>From afar\nFrom\n Fromage\n\n"
        );
        let mut two = entry.clone();
        two.extend_from_slice(&mboxrd_entry("", t, b"Subject: y\n\nbody"));
        let got = entries(&two);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            b"Subject: x\n\nFrom here\n>From there\n>>From afar\nFrom\n Fromage\n"
        );
        assert_eq!(got[1], b"Subject: y\n\nbody\n");
    }

    #[test]
    fn mboxo_quotes_only_from_lines() {
        // Python's mailbox.mbox writes `From ` lines as `>From ` and reads `>` lines as they are.
        let t = std::time::UNIX_EPOCH;
        let entry = mboxo_entry("", t, b"S: x\r\n\r\nFrom a\r\n>From b\r\n");
        assert_eq!(
            entry,
            b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\nS: x\n\n>From a\n>From b\n\n"
        );
    }

    #[test]
    fn reader_refuses_what_is_no_mbox_and_bounds_entries() {
        assert!(entries(b"").is_empty());
        assert!(MboxReader::new(&b"Subject: x\n"[..])
            .next()
            .unwrap()
            .is_err());
        let mut big = b"From x Sat Dec  6 05:46:40 2025\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_ENTRY_BYTES + 10));
        assert!(MboxReader::new(&big[..]).next().unwrap().is_err());
    }

    #[test]
    fn posts_are_told_from_digests_and_notices() {
        let post = b"From: a@x\r\nMessage-ID: <1@x>\r\nPrecedence: list\r\nX-Mailman-Rule-Misses: dmarc-mitigation; no-senders\r\n\r\nhi\r\n";
        assert!(is_post(post));
        let digest = b"From: l-request@x\r\nSubject: L Digest, Vol 1, Issue 1\r\n\r\ntoc\r\n";
        assert!(!is_post(digest));
        let notice = b"From: l-owner@x\r\nPrecedence: bulk\r\nAuto-Submitted: auto-generated\r\n\r\nWelcome\r\n";
        assert!(!is_post(notice));
        // Mailman keeps an author's own Precedence (cook_headers adds one only if absent).
        let bulk_post = b"From: a@x\r\nPrecedence: bulk\r\nAuto-Submitted: auto-replied\r\nX-Mailman-Rule-Hits: x\r\n\r\nhi\r\n";
        assert!(is_post(bulk_post));
        // Chunks of one post share the Message-ID whatever their footers.
        let other_footer = b"From: a@x\r\nMessage-ID: <1@x>\r\nX-Mailman-Rule-Misses: x\r\n\r\nhi\r\n-- \r\nfooter\r\n";
        assert_eq!(post_digest(post), post_digest(other_footer));
        assert_ne!(
            post_digest(post),
            post_digest(b"Message-ID: <2@x>\r\n\r\nhi\r\n")
        );
    }
}
