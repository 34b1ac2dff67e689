//! What a fogmesh device puts on the air and in its GATT server, as pure encode/decode
//! functions: the BlueZ backend ([`super::bluez`], feature `bluetooth`) uses them, and they
//! are tested here on every build, radio or not.
//!
//! Layout (docs/ble.md, "GATT layout"):
//! - one primary service, [`SERVICE_UUID`];
//! - [`RX_UUID`]: write without response — datagrams from the central (the dialer);
//! - [`TX_UUID`]: notify — datagrams from the peripheral (the listener);
//! - [`IDENTITY_UUID`]: read — the node's PeerId, so a scanner can dial it (XK needs the
//!   responder's key before the first byte; 38 bytes do not fit in an advertisement).
//!
//! The advertisement carries service data under [`SERVICE_UUID`]: a version byte and the
//! 8-byte [`DeviceId`] (30 of the 31 bytes of a legacy advertisement, with the flags).
//!
//! Opening a link: the central subscribes to TX, then writes a [`hello`] (its device id) to
//! RX; the peripheral answers on TX with an [`Answer`] addressed to that device id: accepted
//! with the ATT MTU it sees and a one-byte link tag, or refused (already linked, at its link
//! limit, not listening, MTU too small). Everything after an accepted answer is link data
//! (ARQ frames, [`super::frame`]). Hello and answer are at most 20 bytes, so they fit the
//! smallest ATT MTU (23).
//!
//! Why a tag: BlueZ keeps one notification session per characteristic, not per central, so
//! every notification reaches every subscribed central. The peripheral prefixes each
//! notification with the link's tag ([`tagged`]), answers with [`CONTROL_TAG`], and a
//! central keeps only its own ([`untag`]). Writes need no tag: BlueZ names the writing device. So a datagram is at most
//! ATT MTU − 4 bytes ([`max_datagram`]) both ways, and a link needs an ATT MTU of at least 24
//! (the ARQ's smallest datagram is 20); BlueZ and phones negotiate far more (185–517).

use libp2p::PeerId;

use super::driver::DeviceId;

pub const SERVICE_UUID: u128 = 0x6a1f_0c3e_5d2b_4f7a_9e61_666f_676d_0001;
pub const RX_UUID: u128 = 0x6a1f_0c3e_5d2b_4f7a_9e61_666f_676d_0002;
pub const TX_UUID: u128 = 0x6a1f_0c3e_5d2b_4f7a_9e61_666f_676d_0003;
pub const IDENTITY_UUID: u128 = 0x6a1f_0c3e_5d2b_4f7a_9e61_666f_676d_0004;

/// The layout version in advertisements, identities and hellos.
const VERSION: u8 = 1;
const HELLO: u8 = 0xf0;
const ANSWER: u8 = 0xf1;

/// The smallest ATT MTU (Bluetooth Core, Vol 3 Part F 3.2.8): 20 bytes of payload.
pub const MIN_ATT_MTU: u16 = 23;
/// The largest ATT MTU.
pub const MAX_ATT_MTU: u16 = 517;

/// Service data for the advertisement: version, device id.
pub fn advert(device: DeviceId) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(VERSION);
    out.extend_from_slice(&device.0);
    out
}

/// The device id in a fogmesh advertisement's service data; None for anything else.
pub fn parse_advert(data: &[u8]) -> Option<DeviceId> {
    match data {
        [VERSION, id @ ..] => Some(DeviceId(id.try_into().ok()?)),
        _ => None,
    }
}

/// The identity characteristic's value: version, PeerId bytes.
pub fn identity(peer: &PeerId) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&peer.to_bytes());
    out
}

/// The PeerId in an identity value, accepted only if it is the one `advertised` names (so a
/// device cannot advertise one id and claim another node's identity to be dialled as it).
pub fn parse_identity(value: &[u8], advertised: DeviceId) -> Option<PeerId> {
    let [VERSION, bytes @ ..] = value else {
        return None;
    };
    let peer = PeerId::from_bytes(bytes).ok()?;
    (DeviceId::of_peer(&peer) == advertised).then_some(peer)
}

/// The central's first write: who is dialling. Only used to keep one link per pair of
/// devices; the secure channel authenticates the node behind it.
pub fn hello(central: DeviceId) -> Vec<u8> {
    let mut out = vec![HELLO, VERSION];
    out.extend_from_slice(&central.0);
    out
}

pub fn parse_hello(data: &[u8]) -> Option<DeviceId> {
    match data {
        [HELLO, VERSION, id @ ..] => Some(DeviceId(id.try_into().ok()?)),
        _ => None,
    }
}

/// The smallest ATT MTU a link may have: the ARQ's smallest datagram (20) plus the tag.
pub const MIN_LINK_ATT_MTU: u16 = 24;

/// The peripheral's reply to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The link is open: datagrams up to [`max_datagram`]`(att_mtu)` bytes, notifications
    /// for this link tagged `tag`.
    Accepted {
        att_mtu: u16,
        tag: u8,
    },
    AlreadyLinked,
    LinkLimit,
    NotListening,
    MtuTooSmall,
}

impl Answer {
    /// The answer for the central that said hello as `to`.
    pub fn encode(self, to: DeviceId) -> Vec<u8> {
        let (code, mtu, tag) = match self {
            Answer::Accepted { att_mtu, tag } => (0, att_mtu, tag),
            Answer::AlreadyLinked => (1, 0, 0),
            Answer::LinkLimit => (2, 0, 0),
            Answer::NotListening => (3, 0, 0),
            Answer::MtuTooSmall => (4, 0, 0),
        };
        let mut out = vec![ANSWER, VERSION, code];
        out.extend_from_slice(&mtu.to_be_bytes());
        out.push(tag);
        out.extend_from_slice(&to.0);
        out
    }

    /// The central an answer is for, and the answer; None for anything that is not a
    /// well-formed answer, including an accepted one whose MTU is outside 24–517.
    pub fn decode(data: &[u8]) -> Option<(DeviceId, Answer)> {
        let [ANSWER, VERSION, code, hi, lo, tag, ref to @ ..] = *data else {
            return None;
        };
        let to = DeviceId(to.try_into().ok()?);
        let answer = match code {
            0 => {
                let att_mtu = u16::from_be_bytes([hi, lo]);
                if !(MIN_LINK_ATT_MTU..=MAX_ATT_MTU).contains(&att_mtu) {
                    return None;
                }
                Answer::Accepted { att_mtu, tag }
            }
            1 => Answer::AlreadyLinked,
            2 => Answer::LinkLimit,
            3 => Answer::NotListening,
            4 => Answer::MtuTooSmall,
            _ => return None,
        };
        Some((to, answer))
    }
}

/// The tag of notifications that belong to no link: answers to hellos. Links get other tags.
pub const CONTROL_TAG: u8 = 0;

/// A notification for the link tagged `tag`.
pub fn tagged(tag: u8, datagram: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(datagram.len() + 1);
    out.push(tag);
    out.extend_from_slice(datagram);
    out
}

/// The datagram in a notification, if it is for the link tagged `tag`.
pub fn untag(tag: u8, notification: &[u8]) -> Option<&[u8]> {
    match notification {
        [t, datagram @ ..] if *t == tag && !datagram.is_empty() => Some(datagram),
        _ => None,
    }
}

/// The largest datagram a link with this ATT MTU carries either way: an ATT write command or
/// notification has a 3-byte header, and notifications carry the link tag. The MTU is
/// clamped to the legal range first.
pub fn max_datagram(att_mtu: usize) -> usize {
    att_mtu.clamp(MIN_ATT_MTU.into(), MAX_ATT_MTU.into()) - 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn some_peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn advertisement_fits_a_legacy_advertisement() {
        let device = DeviceId([7; 8]);
        let data = advert(device);
        // flags (3) + service data AD structure (length, type, 16-byte UUID, data).
        assert!(3 + 2 + 16 + data.len() <= 31);
        assert_eq!(parse_advert(&data), Some(device));
        assert_eq!(parse_advert(&data[..8]), None);
        assert_eq!(
            parse_advert(&[2, 1, 2, 3, 4, 5, 6, 7, 8]),
            None,
            "other version"
        );
    }

    #[test]
    fn identity_must_match_the_advertised_device() {
        let peer = some_peer();
        let value = identity(&peer);
        assert_eq!(parse_identity(&value, DeviceId::of_peer(&peer)), Some(peer));
        let other = DeviceId::of_peer(&some_peer());
        assert_eq!(parse_identity(&value, other), None);
        assert_eq!(parse_identity(&value[1..], DeviceId::of_peer(&peer)), None);
    }

    #[test]
    fn hello_and_answers_fit_the_smallest_mtu() {
        let limit = usize::from(MIN_ATT_MTU) - 3;
        let central = DeviceId([1; 8]);
        assert!(hello(central).len() <= limit);
        for answer in [
            Answer::Accepted {
                att_mtu: 517,
                tag: 9,
            },
            Answer::AlreadyLinked,
            Answer::LinkLimit,
            Answer::NotListening,
            Answer::MtuTooSmall,
        ] {
            assert!(answer.encode(central).len() <= limit);
            assert_eq!(
                Answer::decode(&answer.encode(central)),
                Some((central, answer))
            );
        }
    }

    #[test]
    fn an_accepted_answer_with_an_impossible_mtu_is_refused() {
        let central = DeviceId([1; 8]);
        for mtu in [0u16, 23, 518, u16::MAX] {
            let mut data = Answer::Accepted {
                att_mtu: 24,
                tag: 1,
            }
            .encode(central);
            data[3..5].copy_from_slice(&mtu.to_be_bytes());
            assert_eq!(Answer::decode(&data), None, "mtu {mtu}");
        }
    }

    #[test]
    fn a_central_keeps_only_its_own_notifications() {
        let note = tagged(3, b"frame");
        assert_eq!(untag(3, &note), Some(&b"frame"[..]));
        assert_eq!(untag(4, &note), None);
        assert_eq!(untag(3, &[3]), None, "a tag alone carries nothing");
        assert_eq!(untag(3, &[]), None);
    }

    #[test]
    fn datagram_size_follows_the_mtu() {
        assert_eq!(
            max_datagram(usize::from(MIN_LINK_ATT_MTU)),
            20,
            "the ARQ's minimum"
        );
        assert_eq!(max_datagram(185), 181);
        assert_eq!(max_datagram(517), 513);
        assert_eq!(max_datagram(4096), 513);
        // A tagged datagram fits one notification.
        assert_eq!(tagged(0, &vec![0; max_datagram(185)]).len(), 185 - 3);
    }

    proptest! {
        #[test]
        fn decoders_never_panic_and_only_accept_their_own_shape(
            data in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            if let Some(device) = parse_hello(&data) {
                prop_assert_eq!(hello(device), data.clone());
            }
            if let Some(device) = parse_advert(&data) {
                prop_assert_eq!(advert(device), data.clone());
            }
            if let Some((to, answer)) = Answer::decode(&data) {
                // Refusals ignore their MTU and tag bytes; anything else decodes only from
                // its own bytes.
                prop_assert_eq!(answer.encode(to).len(), data.len());
                prop_assert_eq!(Answer::decode(&answer.encode(to)), Some((to, answer)));
            }
            let _ = parse_identity(&data, DeviceId([0; 8]));
        }

        #[test]
        fn hello_round_trips(id in any::<[u8; 8]>()) {
            prop_assert_eq!(parse_hello(&hello(DeviceId(id))), Some(DeviceId(id)));
        }
    }
}
