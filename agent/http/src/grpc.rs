//! gRPC's message framing, for the unary calls strait makes and answers
//! itself over hyper (an external authorizer's `Check`, a rate-limit
//! service's `ShouldRateLimit`): one uncompressed, length-prefixed message.
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// The most a message may hold: what the calls carry is small.
pub const MAX_MESSAGE: usize = 1 << 20;

/// One message as sent on the wire.
pub fn frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(0);
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

/// The one message of a unary call's body.
pub fn unframe<M: Message + Default>(body: &[u8]) -> Result<M, &'static str> {
    let [0, a, b, c, d, rest @ ..] = body else {
        return Err("not an uncompressed gRPC message");
    };
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if len > MAX_MESSAGE {
        return Err("a gRPC message too long");
    }
    let message = rest.get(..len).ok_or("a gRPC message cut short")?;
    M::decode(message).map_err(|_| "not the message expected")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, Message)]
    struct Probe {
        #[prost(string, tag = "1")]
        text: String,
    }

    #[test]
    fn a_message_survives_its_framing_and_bad_frames_are_refused() {
        let sent = Probe { text: "no".into() };
        let back: Probe = unframe(&frame(&sent)).unwrap();
        assert_eq!(back, sent);
        assert!(unframe::<Probe>(&[1, 0, 0, 0, 0]).is_err(), "compressed");
        assert!(unframe::<Probe>(&[0, 0, 0, 0, 9, 1]).is_err(), "cut short");
        assert!(
            unframe::<Probe>(&[0, 255, 255, 255, 255]).is_err(),
            "too long"
        );
    }
}
