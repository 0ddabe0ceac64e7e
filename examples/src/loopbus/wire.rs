//! The loopbus wire format: length-prefixed binary frames, one enum.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest frame accepted (a stanza plus headers).
const MAX_FRAME: usize = 64 << 20;

/// Every message on a loopbus connection. Requests carry `req`; the broker answers each with a
/// [`Frame::Reply`] of the same `req`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Sets how many deliveries may be unacked on this connection.
    Hello { req: u64, prefetch: u32 },
    /// Declares `queue` (idempotent) and binds it to `exchange` with `key`.
    Declare {
        req: u64,
        queue: String,
        exchange: String,
        key: String,
    },
    /// Starts consuming `queue`; deliveries carry `consumer`.
    Consume {
        req: u64,
        queue: String,
        consumer: u64,
    },
    /// Stops delivering to `consumer` (unacked deliveries stay unacked).
    Cancel { req: u64, consumer: u64 },
    /// Routes a message; the reply is the confirm (`NO_ROUTE` when `mandatory` and unrouted).
    Publish {
        req: u64,
        exchange: String,
        key: String,
        id: Option<String>,
        from: Option<String>,
        mandatory: bool,
        payload: Vec<u8>,
    },
    /// Settles delivery `tag`: done.
    Ack { req: u64, tag: u64 },
    /// Settles delivery `tag`: failed; requeue it, or dead-letter it.
    Reject {
        req: u64,
        tag: u64,
        dead_letter: bool,
    },
    /// The broker's answer to request `req`.
    Reply { req: u64, code: u8, message: String },
    /// A message for `consumer`; `count` is how many times it has been delivered, this one included.
    Deliver {
        consumer: u64,
        tag: u64,
        exchange: String,
        key: String,
        id: Option<String>,
        from: Option<String>,
        count: u32,
        payload: Vec<u8>,
    },
}

/// Reply codes.
pub(crate) const OK: u8 = 0;
pub(crate) const NO_ROUTE: u8 = 1;
pub(crate) const ERROR: u8 = 2;

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend(v);
        self
    }
    fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    fn opt(&mut self, v: &Option<String>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(s) => self.u8(1).str(s),
        }
    }
}

struct Dec<'a> {
    buf: &'a [u8],
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("loopbus: bad frame ({what})"),
    )
}

impl Dec<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.buf.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> io::Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| bad("a name is not UTF-8"))
    }
    fn opt(&mut self) -> io::Result<Option<String>> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.str().map(Some),
        }
    }
}

impl Frame {
    /// The frame with its 4-byte length prefix.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc(vec![0, 0, 0, 0]);
        match self {
            Frame::Hello { req, prefetch } => e.u8(1).u64(*req).u32(*prefetch),
            Frame::Declare {
                req,
                queue,
                exchange,
                key,
            } => e.u8(2).u64(*req).str(queue).str(exchange).str(key),
            Frame::Consume {
                req,
                queue,
                consumer,
            } => e.u8(3).u64(*req).str(queue).u64(*consumer),
            Frame::Cancel { req, consumer } => e.u8(4).u64(*req).u64(*consumer),
            Frame::Publish {
                req,
                exchange,
                key,
                id,
                from,
                mandatory,
                payload,
            } => e
                .u8(5)
                .u64(*req)
                .str(exchange)
                .str(key)
                .opt(id)
                .opt(from)
                .u8(u8::from(*mandatory))
                .bytes(payload),
            Frame::Ack { req, tag } => e.u8(6).u64(*req).u64(*tag),
            Frame::Reject {
                req,
                tag,
                dead_letter,
            } => e.u8(7).u64(*req).u64(*tag).u8(u8::from(*dead_letter)),
            Frame::Reply { req, code, message } => e.u8(8).u64(*req).u8(*code).str(message),
            Frame::Deliver {
                consumer,
                tag,
                exchange,
                key,
                id,
                from,
                count,
                payload,
            } => e
                .u8(9)
                .u64(*consumer)
                .u64(*tag)
                .str(exchange)
                .str(key)
                .opt(id)
                .opt(from)
                .u32(*count)
                .bytes(payload),
        };
        let len = u32::try_from(e.0.len() - 4).unwrap_or(u32::MAX);
        e.0[..4].copy_from_slice(&len.to_be_bytes());
        e.0
    }

    fn decode(body: &[u8]) -> io::Result<Frame> {
        let mut d = Dec { buf: body };
        let frame = match d.u8()? {
            1 => Frame::Hello {
                req: d.u64()?,
                prefetch: d.u32()?,
            },
            2 => Frame::Declare {
                req: d.u64()?,
                queue: d.str()?,
                exchange: d.str()?,
                key: d.str()?,
            },
            3 => Frame::Consume {
                req: d.u64()?,
                queue: d.str()?,
                consumer: d.u64()?,
            },
            4 => Frame::Cancel {
                req: d.u64()?,
                consumer: d.u64()?,
            },
            5 => Frame::Publish {
                req: d.u64()?,
                exchange: d.str()?,
                key: d.str()?,
                id: d.opt()?,
                from: d.opt()?,
                mandatory: d.u8()? != 0,
                payload: d.bytes()?,
            },
            6 => Frame::Ack {
                req: d.u64()?,
                tag: d.u64()?,
            },
            7 => Frame::Reject {
                req: d.u64()?,
                tag: d.u64()?,
                dead_letter: d.u8()? != 0,
            },
            8 => Frame::Reply {
                req: d.u64()?,
                code: d.u8()?,
                message: d.str()?,
            },
            9 => Frame::Deliver {
                consumer: d.u64()?,
                tag: d.u64()?,
                exchange: d.str()?,
                key: d.str()?,
                id: d.opt()?,
                from: d.opt()?,
                count: d.u32()?,
                payload: d.bytes()?,
            },
            op => return Err(bad(&format!("unknown op {op}"))),
        };
        if !d.buf.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(frame)
    }

    /// Reads one frame; `None` at a clean end of stream.
    pub(crate) async fn read(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Frame>> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(bad("over 64 MiB"));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        Frame::decode(&body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::Hello {
                req: 1,
                prefetch: 32,
            },
            Frame::Declare {
                req: 2,
                queue: "q".into(),
                exchange: "x".into(),
                key: "k".into(),
            },
            Frame::Publish {
                req: 3,
                exchange: "x".into(),
                key: "k".into(),
                id: Some("i".into()),
                from: None,
                mandatory: true,
                payload: (0..=255).collect(),
            },
            Frame::Deliver {
                consumer: 1,
                tag: 9,
                exchange: "x".into(),
                key: "k".into(),
                id: None,
                from: Some("a@b/c".into()),
                count: 2,
                payload: b"<m/>".to_vec(),
            },
            Frame::Reply {
                req: 3,
                code: NO_ROUTE,
                message: "none".into(),
            },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut r = &bytes[..];
        for f in frames {
            assert_eq!(Frame::read(&mut r).await.unwrap(), Some(f));
        }
        assert_eq!(Frame::read(&mut r).await.unwrap(), None);
    }
}
