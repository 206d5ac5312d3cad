//! Fuzzing harness for the frame reader and both message decoders, shared by the cargo-fuzz
//! target `agent_frames` (`builder/fuzz/fuzz_targets/agent_frames.rs`) and its replay test.
//! It lives here so that the oracle is next to the code it checks.

use std::io::Cursor;

use crate::frame::{self, FrameError};
use crate::msg::{GuestMsg, HostMsg};

/// Frames at most read from one input (inputs are small; this only bounds the work).
const MAX_FRAMES: usize = 64;

/// Feeds `data` to the frame reader and both decoders. Panics only on a real bug:
/// a decoded message that does not survive re-encoding, or a reader that over-reads.
///
/// - `data` as a stream of frames: each payload is decoded as [`HostMsg`] and [`GuestMsg`].
/// - `data` as one bare payload, for both types.
pub fn agent_frames(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let mut buf = Vec::new();
    for _ in 0..MAX_FRAMES {
        let before = cursor.position();
        match frame::read_payload(&mut cursor, &mut buf) {
            Ok(true) => {
                assert!(buf.len() <= frame::MAX_FRAME);
                assert_eq!(cursor.position() - before, (frame::HEADER_LEN + buf.len()) as u64);
                payload(&buf);
            }
            Ok(false) => {
                assert_eq!(before, data.len() as u64, "clean EOF only at the end");
                break;
            }
            Err(FrameError::TooLarge { len }) => {
                assert!(len > frame::MAX_FRAME as u64);
                break;
            }
            Err(FrameError::Truncated { expected, got }) => {
                assert!(got < expected);
                break;
            }
            Err(e) => panic!("unexpected reader error on an in-memory stream: {e}"),
        }
    }
    payload(data);
}

fn payload(bytes: &[u8]) {
    if let Ok(msg) = frame::decode::<HostMsg>(bytes) {
        let again = frame::encode(&msg).expect("a decoded HostMsg re-encodes");
        assert_eq!(frame::decode::<HostMsg>(&again[frame::HEADER_LEN..]).expect("re-decodes"), msg);
    }
    if let Ok(msg) = frame::decode::<GuestMsg>(bytes) {
        let again = frame::encode(&msg).expect("a decoded GuestMsg re-encodes");
        assert_eq!(frame::decode::<GuestMsg>(&again[frame::HEADER_LEN..]).expect("re-decodes"), msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_accepts_valid_and_garbage_input() {
        let mut wire = frame::encode(&HostMsg::Shutdown { id: 1 }).unwrap();
        wire.extend(frame::encode(&GuestMsg::Ok { id: 2 }).unwrap());
        agent_frames(&wire);
        agent_frames(&[]);
        agent_frames(&[0xff; 9]);
        agent_frames(&[0, 0, 0, 1, 0, 0, 0]);
    }
}
