//! The persisted certificate cache (issue 14): each member's validated encryption keys and the
//! window in which that validation holds, kept in the store, so that a restart, a reload or a
//! `process` run does not validate every certificate again.
//!
//! An entry is used only when its certificate's digest, the address, the tag (the policy and
//! the versions that validated it) and its checksum match and now is inside its window;
//! anything else is validated in full and written back. Only public key packets are kept.

use super::{Cert, EncryptionKeys, KeyProblem};
use crate::store::{CachedCert, Store};
use openpgp::packet::key::{PublicParts, UnspecifiedRole};
use openpgp::packet::{Key, Signature};
use openpgp::parse::Parse;
use openpgp::serialize::Serialize;
use openpgp::types::Features;
use openpgp::{Packet, PacketPile};
use sequoia_openpgp as openpgp;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type PublicKey = Key<PublicParts, UnspecifiedRole>;

/// Names [`super::POLICY`]: change it whenever that policy is configured differently.
const POLICY_NAME: &str = "StandardPolicy::new";

/// The longest window an entry gets: time-dependent policy (algorithm cut-off dates) is
/// applied again at least this often.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// The tag of entries this build makes and uses: a new listcrypt, sequoia or policy (or
/// entry format) invalidates every entry.
pub fn cache_tag() -> String {
    format!(
        "certcache-1 listcrypt-{} sequoia-openpgp-{} {POLICY_NAME}",
        env!("CARGO_PKG_VERSION"),
        openpgp::VERSION
    )
}

/// A member whose encryption keys are wanted: the bound address, and the certificate with
/// the SHA-256 of its bytes as stored.
pub struct Wanted<'a> {
    pub address: &'a str,
    pub cert: &'a Cert,
    pub sha256: &'a [u8; 32],
}

/// How one [`CertCache::encryption_keys`] call was answered (for logs and benchmarks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheUse {
    /// Answered from a trusted entry.
    pub hits: usize,
    /// Validated in full (no entry, or one not trusted).
    pub validated: usize,
    /// New entries written back.
    pub written: usize,
}

/// The cache in `store`, for entries made under one tag.
pub struct CertCache<'a> {
    store: &'a dyn Store,
    tag: String,
}

/// A failed read or write is logged once per process: the cache only saves time.
static READ_WARNED: AtomicBool = AtomicBool::new(false);
static WRITE_WARNED: AtomicBool = AtomicBool::new(false);

impl<'a> CertCache<'a> {
    /// The cache of this build ([`cache_tag`]).
    pub fn new(store: &'a dyn Store) -> CertCache<'a> {
        CertCache::with_tag(store, cache_tag())
    }

    /// The cache as a build with another tag sees it (tests: a version or policy change).
    pub fn with_tag(store: &'a dyn Store, tag: String) -> CertCache<'a> {
        CertCache { store, tag }
    }

    /// Each wanted member's encryption keys as of `now` (same order), from the cache where a
    /// trusted entry covers `now`, else validated in full and written back.
    pub fn encryption_keys(
        &self,
        wanted: &[Wanted<'_>],
        now: SystemTime,
    ) -> (Vec<Result<EncryptionKeys, KeyProblem>>, CacheUse) {
        let cached = self.lookup(wanted, now);
        let mut used = CacheUse::default();
        let mut fresh = Vec::new();
        let mut out = Vec::with_capacity(wanted.len());
        for (w, hit) in wanted.iter().zip(cached) {
            if let Some(keys) = hit {
                used.hits += 1;
                out.push(Ok(keys));
                continue;
            }
            used.validated += 1;
            let result = EncryptionKeys::at(w.cert, w.address, now);
            if let Ok(keys) = &result {
                fresh.extend(self.entry(w, keys, now));
            }
            out.push(result);
        }
        if !fresh.is_empty() {
            match self.store.cert_cache_put(&fresh) {
                Ok(()) => used.written = fresh.len(),
                Err(e) => warn_once(&WRITE_WARNED, "cannot write the certificate cache", &e),
            }
        }
        (out, used)
    }

    /// The trusted entry's keys for each wanted member, or `None`.
    fn lookup(&self, wanted: &[Wanted<'_>], now: SystemTime) -> Vec<Option<EncryptionKeys>> {
        let mut fprs: Vec<String> = wanted
            .iter()
            .map(|w| w.cert.fingerprint().to_hex())
            .collect();
        fprs.sort_unstable();
        fprs.dedup();
        let rows = match self.store.cert_cache_get(&fprs) {
            Ok(rows) => rows,
            Err(e) => {
                warn_once(&READ_WARNED, "cannot read the certificate cache", &e);
                Vec::new()
            }
        };
        let rows: HashMap<(&str, &str), &CachedCert> = rows
            .iter()
            .map(|r| ((r.fingerprint.as_str(), r.address.as_str()), r))
            .collect();
        wanted
            .iter()
            .map(|w| {
                let fpr = w.cert.fingerprint().to_hex();
                let row = rows.get(&(fpr.as_str(), w.address))?;
                self.trusted(row, w, now)
            })
            .collect()
    }

    /// The keys of `row` if it was made for exactly this certificate under this tag, is
    /// undamaged and covers `now`.
    fn trusted(&self, row: &CachedCert, w: &Wanted<'_>, now: SystemTime) -> Option<EncryptionKeys> {
        let t = secs(now);
        let fits = row.tag == self.tag
            && row.cert_sha256 == w.sha256
            && row.check_sha256 == check(row)
            && row.valid_from <= t
            && t < row.valid_until;
        if !fits {
            return None;
        }
        Some(EncryptionKeys {
            features: Features::new(&row.features),
            keys: decode_keys(&row.keys)?,
            until: match row.expires {
                Some(s) => Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(s).ok()?)),
                None => None,
            },
        })
    }

    /// The entry for keys just validated as of `now`, if they hold beyond this second.
    fn entry(&self, w: &Wanted<'_>, keys: &EncryptionKeys, now: SystemTime) -> Option<CachedCert> {
        let (from, until) = window(w.cert, keys, now);
        let expires = match keys.until {
            Some(t) => Some(whole_secs(t)?),
            None => None,
        };
        let mut e = CachedCert {
            fingerprint: w.cert.fingerprint().to_hex(),
            address: w.address.to_string(),
            cert_sha256: w.sha256.to_vec(),
            tag: self.tag.clone(),
            // Rounded inwards: the window never grows.
            valid_from: secs(from)
                + i64::from(from.duration_since(UNIX_EPOCH).ok()?.subsec_nanos() > 0),
            valid_until: secs(until),
            expires,
            features: keys.features.as_bitfield().as_bytes().to_vec(),
            keys: encode_keys(w.cert, &keys.keys)?,
            check_sha256: Vec::new(),
        };
        if e.valid_until <= secs(now) {
            return None;
        }
        e.check_sha256 = check(&e);
        Some(e)
    }
}

fn warn_once(flag: &AtomicBool, what: &str, e: &dyn std::fmt::Display) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!("{what} (validating certificates in full instead): {e}");
    }
}

/// The window around `now` in which validating `cert` gives the same answer: between the
/// nearest events before and after it, an event being the creation or expiry of any key or
/// signature in `cert` (a future-dated revocation, a binding signature's end, a key's
/// expiry), and at most [`MAX_WINDOW`] long.
fn window(cert: &Cert, keys: &EncryptionKeys, now: SystemTime) -> (SystemTime, SystemTime) {
    let mut from = UNIX_EPOCH;
    let mut until = now + MAX_WINDOW;
    let mut event = |t: SystemTime| {
        if t <= now {
            from = from.max(t);
        } else {
            until = until.min(t);
        }
    };
    let primary = cert.primary_key().key();
    for ka in cert.keys() {
        event(ka.key().creation_time());
        for sig in ka.bundle().signatures() {
            signature_events(sig, ka.key(), &mut event);
        }
    }
    // User ID and attribute binding signatures can set the primary key's expiry.
    for u in cert.userids() {
        u.bundle()
            .signatures()
            .for_each(|s| signature_events(s, primary, &mut event));
    }
    for u in cert.user_attributes() {
        u.bundle()
            .signatures()
            .for_each(|s| signature_events(s, primary, &mut event));
    }
    for u in cert.unknowns() {
        u.bundle()
            .signatures()
            .for_each(|s| signature_events(s, primary, &mut event));
    }
    if let Some(t) = keys.until {
        event(t);
    }
    (from, until)
}

fn signature_events<P, R>(sig: &Signature, key: &Key<P, R>, event: &mut impl FnMut(SystemTime))
where
    P: openpgp::packet::key::KeyParts,
    R: openpgp::packet::key::KeyRole,
{
    let times = [
        sig.signature_creation_time(),
        sig.signature_expiration_time(),
        sig.key_expiration_time(key),
    ];
    times.into_iter().flatten().for_each(event);
}

/// The keys as OpenPGP public key packets (the primary key's tag for the primary key).
fn encode_keys(cert: &Cert, keys: &[PublicKey]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for key in keys {
        let packet = if key.fingerprint() == cert.fingerprint() {
            Packet::from(key.clone().role_into_primary())
        } else {
            Packet::from(key.clone().role_into_subordinate())
        };
        packet.serialize(&mut out).ok()?;
    }
    Some(out)
}

/// Public key packets only, at least one; anything else (a secret key, an unknown or
/// unparsable packet) and the entry is not used.
fn decode_keys(bytes: &[u8]) -> Option<Vec<PublicKey>> {
    let pile = PacketPile::from_bytes(bytes).ok()?;
    let mut keys = Vec::new();
    for packet in pile.into_children() {
        keys.push(match packet {
            Packet::PublicKey(k) => k.role_into_unspecified(),
            Packet::PublicSubkey(k) => k.role_into_unspecified(),
            _ => return None,
        });
    }
    (!keys.is_empty()).then_some(keys)
}

/// SHA-256 over every field but itself, each with its length: a damaged row does not match.
fn check(e: &CachedCert) -> Vec<u8> {
    let mut h = Sha256::new();
    let fields: [&[u8]; 6] = [
        e.fingerprint.as_bytes(),
        e.address.as_bytes(),
        &e.cert_sha256,
        e.tag.as_bytes(),
        &e.features,
        &e.keys,
    ];
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f);
    }
    for n in [e.valid_from, e.valid_until, e.expires.unwrap_or(0)] {
        h.update(n.to_be_bytes());
    }
    h.update([u8::from(e.expires.is_some())]);
    h.finalize().to_vec()
}

/// Whole seconds since the epoch, rounded down (0 before it).
fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch if `t` is a whole second (OpenPGP times are): anything else would
/// not come back from the cache as it went in.
fn whole_secs(t: SystemTime) -> Option<i64> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    (d.subsec_nanos() == 0).then_some(d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use openpgp::cert::prelude::*;
    use openpgp::serialize::MarshalInto;
    use openpgp::types::ReasonForRevocation;

    const ALICE: &str = "alice@x.test";
    const HOUR: Duration = Duration::from_secs(3600);

    /// A Cv25519 certificate for alice made an hour ago (so updates made now are newer) with
    /// `subkeys` encryption subkeys, expiring `validity` after its creation if given.
    fn alice(subkeys: usize, validity: Option<Duration>) -> Cert {
        let mut b = CertBuilder::new()
            .set_cipher_suite(CipherSuite::Cv25519)
            .set_creation_time(SystemTime::now() - HOUR)
            .set_validity_period(validity)
            .add_userid(format!("<{ALICE}>"))
            .add_signing_subkey();
        for _ in 0..subkeys {
            b = b.add_transport_encryption_subkey();
        }
        b.generate().unwrap().0
    }

    fn primary_signer(cert: &Cert) -> openpgp::crypto::KeyPair {
        let key = cert
            .primary_key()
            .key()
            .clone()
            .parts_into_secret()
            .unwrap();
        key.into_keypair().unwrap()
    }

    fn digest(cert: &Cert) -> [u8; 32] {
        Sha256::digest(cert.to_vec().unwrap()).into()
    }

    /// What the encryptor gets, in bytes: the Features body, each key packet's body, expiry.
    type Material = (Vec<u8>, Vec<Vec<u8>>, Option<SystemTime>);

    fn material(keys: &EncryptionKeys) -> Material {
        let packets = keys.keys.iter().map(|k| k.to_vec().unwrap()).collect();
        let features = keys.features.as_bitfield().as_bytes().to_vec();
        (features, packets, keys.until)
    }

    /// `cert`'s keys through `cache` as of `now`, and how the cache answered.
    fn through(
        cache: &CertCache<'_>,
        cert: &Cert,
        now: SystemTime,
    ) -> (Result<EncryptionKeys, KeyProblem>, CacheUse) {
        let sha256 = digest(cert);
        let wanted = [Wanted {
            address: ALICE,
            cert,
            sha256: &sha256,
        }];
        let (mut keys, used) = cache.encryption_keys(&wanted, now);
        (keys.remove(0), used)
    }

    fn cold(cert: &Cert, now: SystemTime) -> Material {
        material(&EncryptionKeys::at(cert, ALICE, now).unwrap())
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        (dir, store)
    }

    /// The PKESKs' recipients (key ids shown) of one message to `keys`.
    fn pkesk_targets(keys: &EncryptionKeys) -> Vec<(Option<openpgp::KeyHandle>, u8)> {
        let content = super::super::sign_content(b"x", None).unwrap();
        let r = [super::super::KeyedRecipient {
            features: &keys.features,
            keys: &keys.keys,
            show_key_id: true,
        }];
        let armored = super::super::encrypt_signed(&content, &r).unwrap();
        let pile = PacketPile::from_bytes(&armored).unwrap();
        pile.children()
            .filter_map(|p| match p {
                Packet::PKESK(p) => Some((p.recipient(), u8::from(p.pk_algo()))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_hit_gives_what_a_cold_validation_gives() {
        let (_dir, store) = store();
        let cache = CertCache::new(&store);
        let cert = alice(2, None);
        let now = SystemTime::now();
        let (first, used) = through(&cache, &cert, now);
        assert_eq!((used.validated, used.written), (1, 1));
        let (hit, used) = through(&cache, &cert, now + Duration::from_secs(5));
        assert_eq!(used.hits, 1, "the second load is answered from the cache");
        let (first, hit) = (first.unwrap(), hit.unwrap());
        assert_eq!(material(&hit), cold(&cert, now));
        assert_eq!(material(&hit), material(&first));
        assert_eq!(hit.keys.len(), 2);
        assert_eq!(pkesk_targets(&hit), pkesk_targets(&first));
        // An entry is per address: another address bound to this certificate is validated.
        let other = CertCache::new(&store);
        let sha256 = digest(&cert);
        let w = [Wanted {
            address: "bob@x.test",
            cert: &cert,
            sha256: &sha256,
        }];
        let (r, used) = other.encryption_keys(&w, now);
        assert!(matches!(r[0], Err(KeyProblem::NoUserId(..))));
        assert_eq!(used.hits, 0);
    }

    /// A new subkey, a revoked subkey and a longer expiry each change the certificate, so
    /// the entry made before is not used: the keys are those of the changed certificate.
    #[test]
    fn a_changed_certificate_is_validated_again() {
        let (_dir, store) = store();
        let cache = CertCache::new(&store);
        let now = SystemTime::now();
        let full = alice(2, Some(2 * HOUR));
        let newest = full.keys().subkeys().last().unwrap().key().fingerprint();
        let one = full
            .clone()
            .retain_subkeys(|ka| ka.key().fingerprint() != newest);
        assert_eq!(through(&cache, &one, now).0.unwrap().keys.len(), 1);
        // A new subkey.
        let (keys, used) = through(&cache, &full, now);
        assert_eq!((used.hits, used.validated), (0, 1));
        assert_eq!(material(&keys.unwrap()), cold(&full, now));
        // A revoked subkey.
        let mut signer = primary_signer(&full);
        let sub = full.keys().subkeys().last().unwrap().key().clone();
        let rev = SubkeyRevocationBuilder::new()
            .set_reason_for_revocation(ReasonForRevocation::KeyRetired, b"")
            .unwrap()
            .build(&mut signer, &full, &sub, None)
            .unwrap();
        let revoked = full.clone().insert_packets(rev).unwrap().0;
        let now = SystemTime::now();
        let keys = through(&cache, &revoked, now).0.unwrap();
        assert_eq!(material(&keys), cold(&revoked, now));
        assert!(keys
            .keys
            .iter()
            .all(|k| k.fingerprint() != sub.fingerprint()));
        assert_eq!(keys.keys.len(), 1);
        // A longer expiry.
        let later = now + 30 * 86_400 * Duration::from_secs(1);
        let vc = revoked.with_policy(&super::super::POLICY, now).unwrap();
        let mut sigs = vc
            .primary_key()
            .set_expiration_time(&mut signer, Some(later))
            .unwrap();
        for ka in vc.keys().subkeys().for_transport_encryption() {
            sigs.extend(
                ka.set_expiration_time(&mut signer, None, Some(later))
                    .unwrap(),
            );
        }
        let extended = revoked.clone().insert_packets(sigs).unwrap().0;
        let now = SystemTime::now();
        let before = through(&cache, &revoked, now).0.unwrap().until;
        let after = through(&cache, &extended, now).0.unwrap().until;
        assert_eq!(
            after,
            Some(UNIX_EPOCH + Duration::from_secs(secs(later) as u64))
        );
        assert!(before < after, "{before:?} < {after:?}");
    }

    /// A certificate that expires in a minute: the entry covers the minute; after it, the
    /// certificate is validated again and found expired.
    #[test]
    fn an_entry_past_its_window_is_validated_again() {
        let (_dir, store) = store();
        let cache = CertCache::new(&store);
        let now = SystemTime::now();
        let cert = alice(1, Some(HOUR + Duration::from_secs(60)));
        assert!(through(&cache, &cert, now).0.is_ok());
        let row = &store
            .cert_cache_get(&[cert.fingerprint().to_hex()])
            .unwrap()[0];
        let expiry = cert.primary_key().key().creation_time() + HOUR + Duration::from_secs(60);
        assert_eq!(row.valid_until, secs(expiry));
        assert!(through(&cache, &cert, now + Duration::from_secs(30)).1.hits == 1);
        let (late, used) = through(&cache, &cert, expiry + Duration::from_secs(1));
        assert!(
            matches!(late, Err(KeyProblem::Expired(_))),
            "{:?}",
            late.err()
        );
        assert_eq!(used.hits, 0);
        // So is a clock set back before the events the entry saw.
        let (_, used) = through(&cache, &cert, now - 2 * HOUR);
        assert_eq!(used.hits, 0);
    }

    /// Replaces the keys of `cert`'s entry with `other`'s, with a valid checksum: what a
    /// trusted entry would say, for telling whether an entry was used.
    fn plant(store: &SqliteStore, cert: &Cert, other: &Cert, tag: &str) {
        let mut row = store
            .cert_cache_get(&[cert.fingerprint().to_hex()])
            .unwrap()[0]
            .clone();
        row.keys = encode_keys(other, &cold_keys(other)).unwrap();
        row.tag = tag.to_string();
        row.check_sha256 = check(&row);
        store.cert_cache_put(&[row]).unwrap();
    }

    fn cold_keys(cert: &Cert) -> Vec<PublicKey> {
        cert.keys()
            .with_policy(&super::super::POLICY, None)
            .subkeys()
            .for_transport_encryption()
            .map(|ka| ka.key().clone().role_into_unspecified())
            .collect()
    }

    #[test]
    fn another_tag_does_not_use_the_entry() {
        let (_dir, store) = store();
        let cert = alice(1, None);
        let other = alice(1, None);
        let now = SystemTime::now();
        let old = CertCache::with_tag(&store, "certcache-1 listcrypt-0.0.9".into());
        through(&old, &cert, now).0.unwrap();
        plant(&store, &cert, &other, "certcache-1 listcrypt-0.0.9");
        // The planted entry is trusted under its own tag...
        let used = through(&old, &cert, now).0.unwrap();
        assert_eq!(used.keys, cold_keys(&other));
        // ...and not by this build, nor under another policy name.
        for tag in [
            cache_tag(),
            "certcache-1 listcrypt-0.0.9 OtherPolicy".into(),
        ] {
            let cache = CertCache::with_tag(&store, tag);
            let (keys, used) = through(&cache, &cert, now);
            assert_eq!(material(&keys.unwrap()), cold(&cert, now));
            assert_eq!(used.hits, 0);
        }
    }

    #[test]
    fn damaged_entries_are_not_used() {
        let (_dir, store) = store();
        let cache = CertCache::new(&store);
        let cert = alice(1, None);
        let now = SystemTime::now();
        through(&cache, &cert, now).0.unwrap();
        let good = store
            .cert_cache_get(&[cert.fingerprint().to_hex()])
            .unwrap()[0]
            .clone();
        let secret = {
            let mut b = Vec::new();
            let k = cert.keys().subkeys().secret().next().unwrap().key().clone();
            Packet::from(k).serialize(&mut b).unwrap();
            b
        };
        type Damage = Box<dyn Fn(&mut CachedCert)>;
        let damaged: Vec<(&str, Damage)> = vec![
            ("a flipped bit", Box::new(|r| r.keys[10] ^= 1)),
            ("cut short", Box::new(|r| r.keys.truncate(20))),
            ("a wrong checksum", Box::new(|r| r.check_sha256[0] ^= 1)),
            (
                "garbage with its checksum",
                Box::new(|r| {
                    r.keys = vec![0xff; 40];
                    r.check_sha256 = check(r);
                }),
            ),
            (
                "a secret key with its checksum",
                Box::new(move |r| {
                    r.keys = secret.clone();
                    r.check_sha256 = check(r);
                }),
            ),
            (
                "no keys with its checksum",
                Box::new(|r| {
                    r.keys.clear();
                    r.check_sha256 = check(r);
                }),
            ),
            (
                "another certificate's digest",
                Box::new(|r| {
                    r.cert_sha256[0] ^= 1;
                    r.check_sha256 = check(r);
                }),
            ),
        ];
        for (what, damage) in damaged {
            let mut row = good.clone();
            damage(&mut row);
            store.cert_cache_put(&[row]).unwrap();
            let (keys, used) = through(&cache, &cert, now);
            assert_eq!(used.hits, 0, "{what}: used");
            assert_eq!(material(&keys.unwrap()), cold(&cert, now), "{what}");
        }
    }
}
