//! The store's binary encoding of CloudEvents and dead letters: versioned,
//! length-prefixed attributes, then the data as it is. Compact and cheap to
//! write on the hot path; a record that does not decode is reported as
//! corrupt, never trusted.

use bytes::Bytes;

use super::{CloudEvent, DeadLetter, StoreError, WatcherId};

const CODEC_VERSION: u8 = 1;

struct Writer(Vec<u8>);

impl Writer {
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
            None => self.0.push(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader past the record's version byte, which must be ours.
    fn versioned(b: &'a [u8]) -> Result<Self, StoreError> {
        let mut r = Reader(b);
        if r.u8()? != CODEC_VERSION {
            return Err(StoreError::Corrupt("unknown record version"));
        }
        Ok(r)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt("truncated record"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, StoreError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| StoreError::Corrupt("text is not UTF-8"))
    }
    fn opt(&mut self) -> Result<Option<String>, StoreError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            _ => Err(StoreError::Corrupt("bad option flag")),
        }
    }
}

/// A compact, versioned encoding of a CloudEvent for the store: length-prefixed
/// attributes, then the data as it is.
pub fn encode_event(ev: &CloudEvent) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(128 + ev.data.len()));
    w.0.push(CODEC_VERSION);
    w.str(&ev.id);
    w.str(&ev.source);
    w.str(&ev.ty);
    w.opt(ev.subject.as_deref());
    w.opt(ev.time.as_deref());
    w.opt(ev.datacontenttype.as_deref());
    w.opt(ev.dataschema.as_deref());
    w.0.extend_from_slice(&(ev.extensions.len() as u32).to_le_bytes());
    for (k, v) in &ev.extensions {
        w.str(k);
        w.str(v);
    }
    w.bytes(&ev.data);
    w.0
}

pub fn decode_event(b: &[u8]) -> Result<CloudEvent, StoreError> {
    let mut r = Reader::versioned(b)?;
    let id = r.str()?;
    let source = r.str()?;
    let ty = r.str()?;
    let subject = r.opt()?;
    let time = r.opt()?;
    let datacontenttype = r.opt()?;
    let dataschema = r.opt()?;
    let n = r.u32()? as usize;
    let mut extensions = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        extensions.push((r.str()?, r.str()?));
    }
    let data = Bytes::copy_from_slice(r.bytes()?);
    Ok(CloudEvent {
        id,
        source,
        ty,
        subject,
        time,
        datacontenttype,
        dataschema,
        extensions,
        data,
    })
}

pub(super) fn encode_dead(d: &DeadLetter) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.0.push(CODEC_VERSION);
    w.0.extend_from_slice(&d.attempts.to_le_bytes());
    w.0.extend_from_slice(&d.dead_at_ms.to_le_bytes());
    w.str(&d.watcher_name);
    w.str(&d.error);
    w.bytes(&encode_event(&d.event));
    // Later than the rest: letters written before these fields decode
    // without them.
    w.0.extend_from_slice(&u32::from(d.code).to_le_bytes());
    w.bytes(&d.data);
    w.0
}

pub(super) fn decode_dead(
    watcher: WatcherId,
    seq: u64,
    b: &[u8],
) -> Result<DeadLetter, StoreError> {
    let mut r = Reader::versioned(b)?;
    let attempts = r.u32()?;
    let dead_at_ms = r.u64()?;
    let watcher_name = r.str()?;
    let error = r.str()?;
    let event = decode_event(r.bytes()?)?;
    let (code, data) = if r.0.is_empty() {
        (0, Vec::new())
    } else {
        let code = u16::try_from(r.u32()?).map_err(|_| StoreError::Corrupt("status code"))?;
        (code, r.bytes()?.to_vec())
    };
    Ok(DeadLetter {
        watcher,
        seq,
        watcher_name,
        error,
        attempts,
        dead_at_ms,
        event,
        code,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_keep_the_last_answer_and_read_without_it() {
        let letter = DeadLetter {
            watcher: 3,
            seq: 9,
            watcher_name: "orders".into(),
            error: "POST answered 422".into(),
            attempts: 1,
            dead_at_ms: 5,
            event: CloudEvent::from_gateway_event("gw", "t", "cfg", Bytes::from_static(b"x")),
            code: 422,
            data: b"refused".to_vec(),
        };
        let b = encode_dead(&letter);
        let back = decode_dead(3, 9, &b).unwrap();
        assert_eq!((back.code, back.data.as_slice()), (422, &b"refused"[..]));
        // Written before the answer was kept: the same without its last fields.
        let old = &b[..b.len() - 4 - 4 - b"refused".len()];
        let back = decode_dead(3, 9, old).unwrap();
        assert_eq!(
            (back.code, back.data.len(), back.error),
            (0, 0, letter.error)
        );
    }

    #[test]
    fn codec_round_trip_and_corruption() {
        let mut e = CloudEvent::from_gateway_event("gw", "t", "cfg", Bytes::from(vec![7; 10]));
        e.extensions
            .push(("traceparent".into(), "00-1-2-01".into()));
        let b = encode_event(&e);
        assert_eq!(decode_event(&b).unwrap(), e);
        for cut in 0..b.len() {
            assert!(decode_event(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
