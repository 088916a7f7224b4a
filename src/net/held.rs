//! Bytes read ahead of their reader: handed out before anything else is read, and their
//! allocation given back once the last of them is taken, so an idle connection keeps none.
//! The HTTP guard holds a request's unconsumed bytes this way, and the TLS transport a
//! handshake flight read in one piece.

use tokio::io::ReadBuf;

#[derive(Debug, Default)]
pub struct Held {
    bytes: Vec<u8>,
    /// How much of `bytes` is taken already.
    at: usize,
}

impl Held {
    /// Whether nothing is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// What is held, not yet taken.
    pub fn rest(&self) -> &[u8] {
        &self.bytes[self.at..]
    }

    /// The bytes allocated for what is held (0 once all of it is taken).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Hold `bytes` instead of what is held now.
    pub fn set(&mut self, bytes: Vec<u8>) {
        self.bytes = bytes;
        self.at = 0;
    }

    /// Hold `front` ahead of what is held already.
    pub fn put_front(&mut self, front: &[u8]) {
        let mut v = Vec::with_capacity(front.len() + self.rest().len());
        v.extend_from_slice(front);
        v.extend_from_slice(self.rest());
        self.set(v);
    }

    /// Move as much of what is held as `buf` has room for.
    pub fn take_into(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.bytes.len() - self.at);
        buf.put_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        if self.is_empty() {
            self.set(Vec::new());
        }
    }
}
