//! Keys members send to the key address: what of them is kept, and their certifications of
//! the list key.

use super::POLICY;
use openpgp::packet::Signature;
use openpgp::{Cert, KeyHandle, Packet};
use sequoia_openpgp as openpgp;

/// The certifications in `returned` (the list key as a member sent it back) that `member`'s
/// key really made over one of the list key's user IDs.
pub fn member_certifications(returned: &Cert, member: &Cert) -> Vec<Signature> {
    let Ok(vc) = member.with_policy(&POLICY, None) else {
        return Vec::new();
    };
    let certifiers: Vec<_> = vc
        .keys()
        .for_certification()
        .alive()
        .revoked(false)
        .collect();
    let primary = returned.primary_key().key();
    let mut out = Vec::new();
    for ua in returned.userids() {
        for sig in ua.certifications() {
            let ok = certifiers.iter().any(|ka| {
                sig.verify_userid_binding(ka.key(), primary, ua.userid())
                    .is_ok()
            });
            if ok {
                out.push(sig.clone());
            }
        }
    }
    out
}

/// Keeps only what the key's owner signed, verified, with an issuer naming the key: the
/// primary key's direct self-signatures, self-signed user IDs and subkeys with their
/// bindings, and the owner's revocations. Third-party certifications, signatures with no
/// issuer or that do not verify, and user attributes go.
pub fn own_signatures_only(cert: &Cert) -> Option<Cert> {
    let cert = cert.clone().strip_secret_key_material();
    let primary = cert.primary_key();
    let handle = KeyHandle::from(primary.key().fingerprint());
    let own = |sig: &&Signature| sig.get_issuers().iter().any(|h| h.aliases(&handle));
    let mut packets: Vec<Packet> = vec![primary.key().clone().into()];
    let direct = primary.self_signatures().chain(primary.self_revocations());
    packets.extend(direct.filter(own).cloned().map(Packet::from));
    for ua in cert.userids() {
        let sigs = ua.self_signatures().chain(ua.self_revocations());
        let sigs: Vec<Packet> = sigs.filter(own).cloned().map(Packet::from).collect();
        if !sigs.is_empty() {
            packets.push(ua.userid().clone().into());
            packets.extend(sigs);
        }
    }
    for ka in cert.keys().subkeys() {
        let sigs = ka.self_signatures().chain(ka.self_revocations());
        let sigs: Vec<Packet> = sigs.filter(own).cloned().map(Packet::from).collect();
        if !sigs.is_empty() {
            packets.push(ka.key().clone().into());
            packets.extend(sigs);
        }
    }
    Cert::from_packets(packets.into_iter()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgp::check_member_cert;
    use crate::pgp::testkit::{certification, foreign, general_purpose};

    #[test]
    fn an_offered_key_keeps_only_its_owners_signatures() {
        let alice = general_purpose("alice@example.org");
        let mallory = general_purpose("mallory@example.org");
        let flooded = alice
            .clone()
            .insert_packets([
                certification(&mallory, &alice, true),
                certification(&mallory, &alice, false),
            ])
            .unwrap()
            .0;
        assert_eq!(foreign(&flooded), 2, "the flooded key carries both");
        let kept = own_signatures_only(&flooded).unwrap();
        assert_eq!(foreign(&kept), 0);
        assert_eq!(kept.userids().count(), 1);
        assert_eq!(
            kept.keys().subkeys().count(),
            alice.keys().subkeys().count()
        );
        assert!(check_member_cert(&kept, "alice@example.org").is_ok());
    }
}
