//! A small NBD client (fixed newstyle handshake, structured replies, base:allocation
//! block status) for qemu-nbd exports on unix sockets, as imageio's nbd backend uses
//! them. Facts from the NBD protocol document (NetworkBlockDevice/nbd doc/proto.md).
//!
//! What the server sends is checked: magics, lengths (bounded before anything is
//! allocated), handles, and chunk offsets within the request.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_FLAG_ERROR: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;

const TFLAG_READ_ONLY: u16 = 1 << 1;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;
const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

const CHUNK_DONE: u16 = 1;
const CHUNK_NONE: u16 = 0;
const CHUNK_OFFSET_DATA: u16 = 1;
const CHUNK_OFFSET_HOLE: u16 = 2;
const CHUNK_BLOCK_STATUS: u16 = 5;
const CHUNK_ERROR: u16 = 32769;
const CHUNK_ERROR_OFFSET: u16 = 32770;

/// Block status flags of base:allocation.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;

/// The largest request Halyard sends (qemu-nbd accepts 32 MiB).
pub const MAX_REQUEST: u32 = 8 << 20;

/// Buffers per `writev` (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// The largest option reply or chunk header payload accepted (not data).
const MAX_REPLY: u32 = 64 << 10;
/// Most block status descriptors accepted in one reply.
const MAX_DESCRIPTORS: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("nbd: {0}")]
    Io(#[from] std::io::Error),
    #[error("nbd protocol: {0}")]
    Protocol(String),
    #[error("nbd server error {code}: {msg}")]
    Server { code: u32, msg: String },
}

type Result<T> = std::result::Result<T, NbdError>;

fn proto<T>(m: impl Into<String>) -> Result<T> {
    Err(NbdError::Protocol(m.into()))
}

/// One connection to an export.
pub struct Client {
    s: UnixStream,
    pub size: u64,
    flags: u16,
    structured: bool,
    meta: Option<u32>,
    handle: u64,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client> {
        let mut s = UnixStream::connect(path).await?;
        if s.read_u64().await? != NBDMAGIC || s.read_u64().await? != IHAVEOPT {
            return proto("not a newstyle NBD server");
        }
        let hflags = s.read_u16().await?;
        if hflags & FLAG_FIXED_NEWSTYLE == 0 {
            return proto("the server does not speak fixed newstyle");
        }
        let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
        s.write_u32(u32::from(
            FLAG_FIXED_NEWSTYLE | if no_zeroes { FLAG_NO_ZEROES } else { 0 },
        ))
        .await?;
        let mut c = Client {
            s,
            size: 0,
            flags: 0,
            structured: false,
            meta: None,
            handle: 0,
        };
        // Structured replies, then the allocation context, then GO.
        c.option(OPT_STRUCTURED_REPLY, &[]).await?;
        c.structured = c.simple_option_reply(OPT_STRUCTURED_REPLY).await?;
        if c.structured {
            let ctx = b"base:allocation";
            let mut data = Vec::new();
            data.extend_from_slice(&0u32.to_be_bytes()); // export name ""
            data.extend_from_slice(&1u32.to_be_bytes());
            data.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
            data.extend_from_slice(ctx);
            c.option(OPT_SET_META_CONTEXT, &data).await?;
            loop {
                let (ty, payload) = c.option_reply(OPT_SET_META_CONTEXT).await?;
                match ty {
                    REP_META_CONTEXT if payload.len() >= 4 => {
                        if &payload[4..] == ctx {
                            c.meta = Some(u32::from_be_bytes([
                                payload[0], payload[1], payload[2], payload[3],
                            ]));
                        }
                    }
                    REP_ACK => break,
                    t if t & REP_FLAG_ERROR != 0 => break,
                    _ => return proto("bad meta context reply"),
                }
            }
        }
        let mut data = Vec::new();
        data.extend_from_slice(&0u32.to_be_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        c.option(OPT_GO, &data).await?;
        let mut got_export = false;
        loop {
            let (ty, payload) = c.option_reply(OPT_GO).await?;
            match ty {
                REP_INFO
                    if payload.len() >= 12
                        && u16::from_be_bytes([payload[0], payload[1]]) == INFO_EXPORT =>
                {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&payload[2..10]);
                    c.size = u64::from_be_bytes(b);
                    c.flags = u16::from_be_bytes([payload[10], payload[11]]);
                    got_export = true;
                }
                REP_ACK => break,
                t if t & REP_FLAG_ERROR != 0 => {
                    return Err(NbdError::Server {
                        code: t,
                        msg: String::from_utf8_lossy(&payload).into_owned(),
                    })
                }
                _ => {}
            }
        }
        if !got_export {
            return proto("no export information");
        }
        Ok(c)
    }

    async fn option(&mut self, opt: u32, data: &[u8]) -> Result<()> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).await?;
        Ok(())
    }

    async fn option_reply(&mut self, opt: u32) -> Result<(u32, Vec<u8>)> {
        if self.s.read_u64().await? != REPLY_MAGIC {
            return proto("bad option reply magic");
        }
        if self.s.read_u32().await? != opt {
            return proto("reply to another option");
        }
        let ty = self.s.read_u32().await?;
        let len = self.s.read_u32().await?;
        if len > MAX_REPLY {
            return proto("option reply too long");
        }
        let mut p = vec![0u8; len as usize];
        self.s.read_exact(&mut p).await?;
        Ok((ty, p))
    }

    async fn simple_option_reply(&mut self, opt: u32) -> Result<bool> {
        let (ty, _) = self.option_reply(opt).await?;
        Ok(ty == REP_ACK)
    }

    pub fn read_only(&self) -> bool {
        self.flags & TFLAG_READ_ONLY != 0
    }

    pub fn can_multi_conn(&self) -> bool {
        self.flags & TFLAG_CAN_MULTI_CONN != 0
    }

    pub fn can_zero(&self) -> bool {
        self.flags & TFLAG_SEND_WRITE_ZEROES != 0
    }

    pub fn can_flush(&self) -> bool {
        self.flags & TFLAG_SEND_FLUSH != 0
    }

    pub fn can_extents(&self) -> bool {
        self.meta.is_some()
    }

    /// The 28-byte header of a new request; its handle is the next one.
    fn header(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> ([u8; 28], u64) {
        self.handle = self.handle.wrapping_add(1);
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&flags.to_be_bytes());
        b[6..8].copy_from_slice(&cmd.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..28].copy_from_slice(&len.to_be_bytes());
        (b, self.handle)
    }

    async fn request(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> Result<u64> {
        let (b, h) = self.header(cmd, flags, offset, len);
        self.write_all_vectored(&[&b, data]).await?;
        Ok(h)
    }

    /// Writes every buffer, in order, with as few `writev` calls as the socket allows.
    async fn write_all_vectored(&mut self, bufs: &[&[u8]]) -> Result<()> {
        let mut i = 0; // the first buffer not yet written whole
        let mut at = 0; // how much of it is written
        while i < bufs.len() {
            if bufs[i].len() == at {
                i += 1;
                at = 0;
                continue;
            }
            let mut slices = Vec::with_capacity((bufs.len() - i).min(IOV_MAX));
            slices.push(std::io::IoSlice::new(&bufs[i][at..]));
            for b in bufs[i + 1..].iter().take(IOV_MAX - 1) {
                slices.push(std::io::IoSlice::new(b));
            }
            let mut n = self.s.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            while n > 0 && i < bufs.len() {
                let left = bufs[i].len() - at;
                if n >= left {
                    n -= left;
                    i += 1;
                    at = 0;
                } else {
                    at += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return proto(format!(
                "request {offset}+{len} past the end of the export ({})",
                self.size
            ));
        }
        Ok(())
    }

    /// Reads a reply (simple or structured) to `handle`; `buf` receives READ data at
    /// request-relative offsets; `status` collects block status descriptors.
    async fn reply(
        &mut self,
        handle: u64,
        offset: u64,
        mut buf: Option<&mut [u8]>,
        mut status: Option<&mut Vec<(u32, u32)>>,
    ) -> Result<()> {
        loop {
            let magic = self.s.read_u32().await?;
            match magic {
                SIMPLE_REPLY_MAGIC => {
                    let err = self.s.read_u32().await?;
                    if self.s.read_u64().await? != handle {
                        return proto("reply to another request");
                    }
                    if err != 0 {
                        return Err(NbdError::Server {
                            code: err,
                            msg: "error".into(),
                        });
                    }
                    if let Some(b) = buf.as_deref_mut() {
                        self.s.read_exact(b).await?;
                    }
                    return Ok(());
                }
                STRUCTURED_REPLY_MAGIC => {
                    let flags = self.s.read_u16().await?;
                    let ty = self.s.read_u16().await?;
                    if self.s.read_u64().await? != handle {
                        return proto("reply to another request");
                    }
                    let len = self.s.read_u32().await?;
                    match ty {
                        CHUNK_NONE => {
                            if len != 0 {
                                return proto("NONE chunk with payload");
                            }
                        }
                        CHUNK_OFFSET_DATA => {
                            let b = buf.as_deref_mut().ok_or_else(|| {
                                NbdError::Protocol("data chunk for a command without data".into())
                            })?;
                            if len < 8 {
                                return proto("short data chunk");
                            }
                            let at = self.s.read_u64().await?;
                            let n = u64::from(len - 8);
                            let rel = at.checked_sub(offset).filter(|r| r + n <= b.len() as u64);
                            let Some(rel) = rel else {
                                return proto("data chunk outside the request");
                            };
                            self.s
                                .read_exact(&mut b[rel as usize..(rel + n) as usize])
                                .await?;
                        }
                        CHUNK_OFFSET_HOLE => {
                            let b = buf.as_deref_mut().ok_or_else(|| {
                                NbdError::Protocol("hole chunk for a command without data".into())
                            })?;
                            if len != 12 {
                                return proto("bad hole chunk");
                            }
                            let at = self.s.read_u64().await?;
                            let n = u64::from(self.s.read_u32().await?);
                            let rel = at.checked_sub(offset).filter(|r| r + n <= b.len() as u64);
                            let Some(rel) = rel else {
                                return proto("hole chunk outside the request");
                            };
                            b[rel as usize..(rel + n) as usize].fill(0);
                        }
                        CHUNK_BLOCK_STATUS => {
                            if len < 4 || (len - 4) % 8 != 0 || (len - 4) / 8 > MAX_DESCRIPTORS {
                                return proto("bad block status chunk");
                            }
                            let ctx = self.s.read_u32().await?;
                            let mut p = vec![0u8; (len - 4) as usize];
                            self.s.read_exact(&mut p).await?;
                            if Some(ctx) == self.meta {
                                if let Some(st) = status.as_deref_mut() {
                                    for d in p.chunks_exact(8) {
                                        st.push((
                                            u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
                                            u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                                        ));
                                    }
                                }
                            }
                        }
                        CHUNK_ERROR | CHUNK_ERROR_OFFSET => {
                            if !(6..=MAX_REPLY).contains(&len) {
                                return proto("bad error chunk");
                            }
                            let mut p = vec![0u8; len as usize];
                            self.s.read_exact(&mut p).await?;
                            let code = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                            let ml = u16::from_be_bytes([p[4], p[5]]) as usize;
                            let msg = String::from_utf8_lossy(p.get(6..6 + ml).unwrap_or(&[]))
                                .into_owned();
                            // The reply is done only with the DONE flag: drain to it.
                            if flags & CHUNK_DONE == 0 {
                                Box::pin(self.reply(handle, offset, None, None)).await.ok();
                            }
                            return Err(NbdError::Server { code, msg });
                        }
                        _ => {
                            if len > MAX_REPLY {
                                return proto("unknown chunk too long");
                            }
                            let mut p = vec![0u8; len as usize];
                            self.s.read_exact(&mut p).await?;
                        }
                    }
                    if flags & CHUNK_DONE != 0 {
                        return Ok(());
                    }
                }
                _ => return proto(format!("bad reply magic {magic:#x}")),
            }
        }
    }

    /// Reads `buf.len()` (at most [`MAX_REQUEST`]) bytes at `offset`.
    pub async fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let len = u32::try_from(buf.len()).ok().filter(|l| *l <= MAX_REQUEST);
        let Some(len) = len else {
            return proto("read too large");
        };
        let h = self.request(CMD_READ, 0, offset, len, &[]).await?;
        self.reply(h, offset, Some(buf), None).await
    }

    /// Writes `parts` (together at most [`MAX_REQUEST`] bytes) at `offset`, as one
    /// request, without joining them first.
    pub async fn write_parts(&mut self, offset: u64, parts: &[bytes::Bytes]) -> Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        self.check_range(offset, total as u64)?;
        let len = u32::try_from(total).ok().filter(|l| *l <= MAX_REQUEST);
        let Some(len) = len else {
            return proto("write too large");
        };
        let (b, h) = self.header(CMD_WRITE, 0, offset, len);
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        bufs.push(&b);
        bufs.extend(parts.iter().map(|p| &p[..]));
        self.write_all_vectored(&bufs).await?;
        self.reply(h, offset, None, None).await
    }

    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        let len = u32::try_from(data.len()).ok().filter(|l| *l <= MAX_REQUEST);
        let Some(len) = len else {
            return proto("write too large");
        };
        let h = self.request(CMD_WRITE, 0, offset, len, data).await?;
        self.reply(h, offset, None, None).await
    }

    /// Zeroes a range; `punch` lets the server deallocate it.
    pub async fn zero(&mut self, mut offset: u64, len: u64, punch: bool) -> Result<()> {
        self.check_range(offset, len)?;
        let mut left = len;
        while left > 0 {
            let n = left.min(1 << 30) as u32;
            if self.can_zero() {
                let flags = if punch { 0 } else { CMD_FLAG_NO_HOLE };
                let h = self
                    .request(CMD_WRITE_ZEROES, flags, offset, n, &[])
                    .await?;
                self.reply(h, offset, None, None).await?;
            } else {
                let zeros = vec![0u8; n.min(MAX_REQUEST) as usize];
                let mut done = 0u32;
                while done < n {
                    let k = (n - done).min(MAX_REQUEST);
                    self.write(offset + u64::from(done), &zeros[..k as usize])
                        .await?;
                    done += k;
                }
            }
            offset += u64::from(n);
            left -= u64::from(n);
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        if !self.can_flush() {
            return Ok(());
        }
        let h = self.request(CMD_FLUSH, 0, 0, 0, &[]).await?;
        self.reply(h, 0, None, None).await
    }

    /// base:allocation status of the whole export: (start, length, flags), merged.
    pub async fn extents(&mut self) -> Result<Vec<(u64, u64, u32)>> {
        let mut out: Vec<(u64, u64, u32)> = Vec::new();
        if self.meta.is_none() {
            if self.size > 0 {
                out.push((0, self.size, 0));
            }
            return Ok(out);
        }
        let mut pos = 0u64;
        while pos < self.size {
            let n = (self.size - pos).min(1 << 30) as u32;
            let h = self.request(CMD_BLOCK_STATUS, 0, pos, n, &[]).await?;
            let mut st = Vec::new();
            self.reply(h, pos, None, Some(&mut st)).await?;
            if st.is_empty() {
                return proto("no block status for the range");
            }
            let start = pos;
            for (len, flags) in st {
                if len == 0 {
                    return proto("zero-length extent");
                }
                let len = u64::from(len).min(self.size - pos);
                match out.last_mut() {
                    Some(last) if last.2 == flags && last.0 + last.1 == pos => last.1 += len,
                    _ => out.push((pos, len, flags)),
                }
                pos += len;
                if pos >= self.size {
                    break;
                }
            }
            if pos == start {
                return proto("block status made no progress");
            }
        }
        Ok(out)
    }

    pub async fn disconnect(mut self) {
        let _ = self.request(CMD_DISC, 0, 0, 0, &[]).await;
    }
}
