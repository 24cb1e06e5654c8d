//! The log's record format. Records are framed `[len u32][crc32 u32][body]`,
//! little-endian; bodies are `1, seq u64, n u16, watcher u64 × n, event` for an
//! append and `2, watcher u64, seq u64` for an acknowledgement. Reading stops at
//! the first record that is incomplete or fails its checksum: after a crash,
//! that is a torn tail, and it is where the log ends.

use super::WatcherId;

const APPEND: u8 = 1;
const ACK: u8 = 2;
const FRAME: usize = 8;

/// Appends an append record for `event` (encoded) to `buf`.
pub fn encode_append(buf: &mut Vec<u8>, seq: u64, watchers: &[WatcherId], event: &[u8]) {
    let start = begin(buf);
    buf.push(APPEND);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(watchers.len() as u16).to_le_bytes());
    for w in watchers {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    buf.extend_from_slice(event);
    finish(buf, start);
}

/// Appends an ack record to `buf`.
pub fn encode_ack(buf: &mut Vec<u8>, watcher: WatcherId, seq: u64) {
    let start = begin(buf);
    buf.push(ACK);
    buf.extend_from_slice(&watcher.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    finish(buf, start);
}

fn begin(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME]);
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let body = &buf[start + FRAME..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
}

/// A record read back from a segment.
pub(super) enum Record<'a> {
    Append {
        seq: u64,
        watchers: Vec<WatcherId>,
        event: &'a [u8],
    },
    Ack {
        watcher: WatcherId,
        seq: u64,
    },
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The framed length of the record at the start of `data`, if it checks out.
/// Public for the fuzz tests: after a crash a segment file is outside input.
pub fn read_record_len(data: &[u8]) -> Option<usize> {
    read_record(data).map(|(_, len)| len)
}

/// Reads the record at the start of `data`: the record and its framed length,
/// or None if it is incomplete or does not check out (the end of the log).
pub(super) fn read_record(data: &[u8]) -> Option<(Record<'_>, usize)> {
    let len = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data.get(4..FRAME)?.try_into().ok()?);
    let body = data.get(FRAME..FRAME + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let record = match *body.first()? {
        APPEND => {
            let seq = u64_at(body, 1)?;
            let n = u16::from_le_bytes(body.get(9..11)?.try_into().ok()?) as usize;
            let watchers = (0..n)
                .map(|i| u64_at(body, 11 + 8 * i))
                .collect::<Option<Vec<_>>>()?;
            let event = body.get(11 + 8 * n..)?;
            Record::Append {
                seq,
                watchers,
                event,
            }
        }
        ACK => Record::Ack {
            watcher: u64_at(body, 1)?,
            seq: u64_at(body, 9)?,
        },
        _ => return None,
    };
    Some((record, FRAME + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_truncation_of_a_record_is_refused() {
        let mut buf = Vec::new();
        encode_append(&mut buf, 9, &[1, 2, 3], b"payload");
        assert!(read_record(&buf).is_some());
        for cut in 0..buf.len() {
            assert!(read_record(&buf[..cut]).is_none(), "cut at {cut}");
        }
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(read_record(&flipped).is_none());
    }
}
