//! Reading a `WatchResponse` without decoding it whole. A watcher's thread reads every event
//! the server delivers, and with thousands of watchers that is most of the client's work: prost
//! would allocate the events, their keys and values for each response. Here the message is
//! walked in place (protobuf wire format: a varint tag of field number and wire type, then a
//! varint, a fixed 32 or 64-bit word, or a length-prefixed byte string), keeping only what the
//! bench checks (watch ID, created, canceled, compaction, cancel reason) and, for each event, its
//! type, `mod_revision` and value. Unknown fields are skipped, as protobuf requires. Nothing
//! here allocates.
//!
//! The put-to-event stamp is the first [`STAMP_BYTES`] of a value: the put's send time, in
//! nanoseconds since the run's start, big-endian.

use crate::args::STAMP_BYTES;

/// One field's value as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    fn int(self) -> Result<u64, String> {
        match self {
            Value::Varint(v) => Ok(v),
            other => Err(format!("expected a varint, got {other:?}")),
        }
    }

    fn bytes(self) -> Result<&'a [u8], String> {
        match self {
            Value::Bytes(b) => Ok(b),
            other => Err(format!("expected a length-delimited field, got {other:?}")),
        }
    }
}

/// The fields of one message, in wire order: (field number, value).
pub struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.at) else {
                return Err("truncated varint".into());
            };
            self.at += 1;
            if shift == 63 && b > 1 {
                return Err("varint longer than 64 bits".into());
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let b = self.buf.get(self.at..self.at + N).ok_or("truncated fixed-width field")?;
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn field(&mut self) -> Result<(u32, Value<'a>), String> {
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3).map_err(|_| "field number out of range".to_string())?;
        if number == 0 {
            return Err("field number 0".into());
        }
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.fixed::<8>()?)),
            5 => Value::Fixed32(u32::from_le_bytes(self.fixed::<4>()?)),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length out of range".to_string())?;
                let end = self.at.checked_add(len).filter(|&e| e <= self.buf.len()).ok_or("truncated bytes field")?;
                let b = &self.buf[self.at..end];
                self.at = end;
                Value::Bytes(b)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.buf.len() {
            return None;
        }
        let f = self.field();
        if f.is_err() {
            // Nothing after a malformed field can be trusted.
            self.at = self.buf.len();
        }
        Some(f)
    }
}

/// What a `WatchResponse` says besides its events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WatchHead<'a> {
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: &'a [u8],
    pub fragment: bool,
    /// Events in the response (each also handed to the callback).
    pub events: usize,
}

/// `mvccpb.Event.EventType`.
pub const EVENT_PUT: u64 = 0;
#[cfg(test)]
pub const EVENT_DELETE: u64 = 1;

/// The parts of one `mvccpb.Event` the bench looks at (of its `kv`; `prev_kv` is skipped).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventView<'a> {
    pub kind: u64,
    pub key: &'a [u8],
    pub mod_revision: i64,
    pub value: &'a [u8],
}

/// Reads a `WatchResponse`, calling `on_event` for each event in order.
pub fn watch_response<'a>(msg: &'a [u8], mut on_event: impl FnMut(EventView<'a>)) -> Result<WatchHead<'a>, String> {
    let mut head = WatchHead::default();
    for f in Fields::new(msg) {
        let (number, value) = f?;
        match number {
            2 => head.watch_id = value.int()? as i64,
            3 => head.created = value.int()? != 0,
            4 => head.canceled = value.int()? != 0,
            5 => head.compact_revision = value.int()? as i64,
            6 => head.cancel_reason = value.bytes()?,
            7 => head.fragment = value.int()? != 0,
            11 => {
                on_event(event(value.bytes()?)?);
                head.events += 1;
            }
            _ => {} // 1: the header; fields added after 3.4
        }
    }
    Ok(head)
}

fn event(msg: &[u8]) -> Result<EventView<'_>, String> {
    let mut ev = EventView::default();
    for f in Fields::new(msg) {
        let (number, value) = f?;
        match number {
            1 => ev.kind = value.int()?,
            2 => {
                for f in Fields::new(value.bytes()?) {
                    let (number, value) = f?;
                    match number {
                        1 => ev.key = value.bytes()?,
                        3 => ev.mod_revision = value.int()? as i64,
                        5 => ev.value = value.bytes()?,
                        _ => {}
                    }
                }
            }
            _ => {} // 3: prev_kv
        }
    }
    Ok(ev)
}

/// The send time a watch workload's put wrote at the start of its value.
pub fn stamp(value: &[u8]) -> Option<u64> {
    let b: [u8; STAMP_BYTES] = value.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Writes `ns` as the stamp at the start of `value` (at least [`STAMP_BYTES`] long).
pub fn write_stamp(value: &mut [u8], ns: u64) {
    value[..STAMP_BYTES].copy_from_slice(&ns.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use metastore_proto::etcdserverpb::{ResponseHeader, WatchResponse};
    use metastore_proto::mvccpb::{event::EventType, Event, KeyValue};
    use prost::Message;

    fn kv(key: &[u8], rev: i64, value: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: 2,
            mod_revision: rev,
            version: 7,
            value: value.to_vec(),
            lease: 99,
        }
    }

    fn events_of(msg: &[u8]) -> (WatchHead<'_>, Vec<EventView<'_>>) {
        let mut evs = Vec::new();
        let head = watch_response(msg, |e| evs.push(e)).unwrap();
        (head, evs)
    }

    #[test]
    fn reads_what_prost_wrote() {
        let mut stamped = vec![b'v'; 32];
        write_stamp(&mut stamped, 123_456_789);
        let resp = WatchResponse {
            header: Some(ResponseHeader { cluster_id: 1, member_id: 2, revision: 1_000_000, raft_term: 3 }),
            watch_id: 42,
            events: vec![
                Event { r#type: EventType::Put as i32, kv: Some(kv(b"k1", 500, &stamped)), prev_kv: None },
                Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue { key: b"k2".to_vec(), mod_revision: 501, ..Default::default() }),
                    prev_kv: Some(kv(b"k2", 400, b"old")),
                },
            ],
            ..Default::default()
        };
        let bytes = resp.encode_to_vec();
        let (head, evs) = events_of(&bytes);
        assert_eq!(head.watch_id, 42);
        assert!(!head.created && !head.canceled && !head.fragment);
        assert_eq!((head.compact_revision, head.events), (0, 2));
        assert_eq!(evs[0], EventView { kind: EVENT_PUT, key: b"k1", mod_revision: 500, value: &stamped });
        assert_eq!(stamp(evs[0].value), Some(123_456_789));
        assert_eq!(evs[1], EventView { kind: EVENT_DELETE, key: b"k2", mod_revision: 501, value: b"" });
        assert_eq!(stamp(evs[1].value), None);

        let created = WatchResponse { watch_id: 0, created: true, ..Default::default() }.encode_to_vec();
        let (head, evs) = events_of(&created);
        assert!(head.created && evs.is_empty() && head.watch_id == 0);
        let canceled = WatchResponse {
            watch_id: -1,
            canceled: true,
            compact_revision: 77,
            cancel_reason: "mvcc: required revision has been compacted".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let (head, _) = events_of(&canceled);
        assert_eq!(head.watch_id, -1);
        assert!(head.canceled && head.compact_revision == 77);
        assert_eq!(head.cancel_reason, b"mvcc: required revision has been compacted");
        assert_eq!(events_of(&[]).0, WatchHead::default());
    }

    #[test]
    fn skips_unknown_fields_and_refuses_malformed_ones() {
        // Field 15 (varint), 16 (fixed64), 17 (fixed32), 18 (bytes) before the watch ID.
        let mut m = Vec::new();
        m.extend_from_slice(&[15 << 3, 0x96, 0x01]); // 150
        m.extend_from_slice(&[0x81, 0x01]); // field 16, fixed64
        m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        m.extend_from_slice(&[0x8d, 0x01, 1, 2, 3, 4]); // field 17, fixed32
        m.extend_from_slice(&[0x92, 0x01, 2, b'h', b'i']); // field 18, bytes
        m.extend_from_slice(&[2 << 3, 5]); // watch_id 5
        let (head, _) = events_of(&m);
        assert_eq!(head.watch_id, 5);
        let fields: Vec<_> = Fields::new(&m).map(Result::unwrap).collect();
        assert_eq!(fields[0], (15, Value::Varint(150)));
        assert_eq!(fields[1], (16, Value::Fixed64(u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]))));
        assert_eq!(fields[2], (17, Value::Fixed32(u32::from_le_bytes([1, 2, 3, 4]))));
        assert_eq!(fields[3], (18, Value::Bytes(b"hi")));

        assert!(watch_response(&[2 << 3], |_| {}).is_err(), "truncated varint");
        assert!(watch_response(&[11 << 3 | 2, 5, 0], |_| {}).is_err(), "truncated event");
        assert!(watch_response(&[2 << 3 | 2, 0], |_| {}).is_err(), "watch_id must be a varint");
        assert!(watch_response(&[3 << 3 | 3], |_| {}).is_err(), "groups are not supported");
        assert!(watch_response(&[0], |_| {}).is_err(), "field 0");
        assert!(watch_response(&[2 << 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], |_| {}).is_err());
        // A negative int64 is a ten-byte varint.
        let neg = WatchResponse { watch_id: -1, ..Default::default() }.encode_to_vec();
        assert_eq!(events_of(&neg).0.watch_id, -1);
    }

    #[test]
    fn stamps_round_trip() {
        let mut v = [0u8; 8];
        for ns in [0u64, 1, 1_000_000_007, u64::MAX] {
            write_stamp(&mut v, ns);
            assert_eq!(stamp(&v), Some(ns));
        }
        assert_eq!(stamp(&[1, 2, 3]), None);
        let mut long = vec![b'v'; 256];
        write_stamp(&mut long, 5);
        assert_eq!(&long[..8], &[0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(long[8], b'v');
    }
}
