//! The response encoders behind [`crate::policy::compress`]: gzip (flate2), brotli and
//! zstd, fed the body piece by piece. Each piece is flushed through, so what a slow origin
//! has sent reaches the client at once (a sync flush costs a few bytes per piece); memory
//! per response is bounded by the codecs' windows, kept small on purpose.

use crate::config::compression::Coding;
use bytes::Bytes;
use std::io::Write;

/// brotli's window: 2^18 = 256 KiB (its default is 4 MiB per response).
const BROTLI_LGWIN: u32 = 18;
/// zstd's window: 2^20 = 1 MiB.
const ZSTD_WINDOW_LOG: u32 = 20;
const BUF: usize = 4096;

enum Codec {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

pub struct Encoder {
    codec: Option<Codec>,
}

impl Encoder {
    pub fn new(coding: Coding, level: u32) -> std::io::Result<Encoder> {
        let codec = match coding {
            Coding::Gzip => Codec::Gzip(flate2::write::GzEncoder::new(
                Vec::with_capacity(BUF),
                flate2::Compression::new(level),
            )),
            Coding::Br => Codec::Br(Box::new(brotli::CompressorWriter::new(
                Vec::with_capacity(BUF),
                BUF,
                level,
                BROTLI_LGWIN,
            ))),
            Coding::Zstd => {
                let mut e =
                    zstd::stream::write::Encoder::new(Vec::with_capacity(BUF), level as i32)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                Codec::Zstd(e)
            }
        };
        Ok(Encoder { codec: Some(codec) })
    }

    /// Encode one piece of the body; `end`: it is the last (may be empty). Returns what the
    /// client gets for it, possibly empty.
    pub fn push(&mut self, data: &[u8], end: bool) -> std::io::Result<Bytes> {
        if end {
            let out = match self.codec.take() {
                None => Vec::new(),
                Some(Codec::Gzip(mut g)) => {
                    g.write_all(data)?;
                    g.finish()?
                }
                Some(Codec::Br(mut b)) => {
                    b.write_all(data)?;
                    b.flush()?;
                    b.into_inner()
                }
                Some(Codec::Zstd(mut z)) => {
                    z.write_all(data)?;
                    z.finish()?
                }
            };
            return Ok(Bytes::from(out));
        }
        let out = match self.codec.as_mut() {
            None => return Ok(Bytes::new()),
            Some(Codec::Gzip(g)) => {
                g.write_all(data)?;
                g.flush()?;
                g.get_mut()
            }
            Some(Codec::Br(b)) => {
                b.write_all(data)?;
                b.flush()?;
                b.get_mut()
            }
            Some(Codec::Zstd(z)) => {
                z.write_all(data)?;
                z.flush()?;
                z.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .expect("gzip");
            }
            Coding::Br => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .expect("br");
            }
            Coding::Zstd => out = zstd::stream::decode_all(data).expect("zstd"),
        }
        out
    }

    #[test]
    fn each_piece_comes_out_flushed_and_the_whole_decodes() {
        let body: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for (coding, level) in [(Coding::Gzip, 6), (Coding::Br, 4), (Coding::Zstd, 3)] {
            let mut e = Encoder::new(coding, level).expect("encoder");
            let mut wire = Vec::new();
            for piece in body.chunks(7000) {
                let out = e.push(piece, false).expect("push");
                assert!(!out.is_empty(), "{coding:?}: a piece is flushed through");
                wire.extend_from_slice(&out);
            }
            wire.extend_from_slice(&e.push(b"", true).expect("end"));
            assert!(
                wire.len() < body.len() / 3,
                "{coding:?}: {} bytes",
                wire.len()
            );
            assert_eq!(decode(coding, &wire), body, "{coding:?}");
        }
    }
}
