//! Request signing of RFC 8555 §6.2: JWS with ES256 over the account's P-256 key, and the
//! JWK thumbprint (RFC 7638) that key authorizations end with.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::{hash, MessageDigest};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use serde_json::{json, Value};

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn new_key() -> Result<PKey<Private>, String> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(|e| e.to_string())?;
    let key = EcKey::generate(&group).map_err(|e| e.to_string())?;
    PKey::from_ec_key(key).map_err(|e| e.to_string())
}

/// The public point, base64url, each coordinate padded to 32 bytes.
fn coordinates(key: &PKey<Private>) -> Result<(String, String), String> {
    let ec = key
        .ec_key()
        .map_err(|e| format!("the account key is not EC: {e}"))?;
    let mut ctx = BigNumContext::new().map_err(|e| e.to_string())?;
    let (mut x, mut y) = (
        BigNum::new().map_err(|e| e.to_string())?,
        BigNum::new().map_err(|e| e.to_string())?,
    );
    ec.public_key()
        .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
        .map_err(|e| e.to_string())?;
    let x = x.to_vec_padded(32).map_err(|e| e.to_string())?;
    let y = y.to_vec_padded(32).map_err(|e| e.to_string())?;
    Ok((b64(&x), b64(&y)))
}

pub fn jwk(key: &PKey<Private>) -> Result<Value, String> {
    let (x, y) = coordinates(key)?;
    Ok(json!({"crv": "P-256", "kty": "EC", "x": x, "y": y}))
}

pub fn thumbprint(key: &PKey<Private>) -> Result<String, String> {
    let (x, y) = coordinates(key)?;
    // Written by hand: RFC 7638 fixes the member order and forbids whitespace.
    let text = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let digest = hash(MessageDigest::sha256(), text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(b64(&digest))
}

/// Who signs: a new account sends its JWK, a known one its account URL.
pub enum Signer<'a> {
    Jwk,
    Kid(&'a str),
}

/// The flattened JSON serialization of a signed request. `payload` None: POST-as-GET.
pub fn sign(
    key: &PKey<Private>,
    signer: Signer<'_>,
    nonce: &str,
    url: &str,
    payload: Option<&Value>,
) -> Result<Vec<u8>, String> {
    let mut protected = json!({"alg": "ES256", "nonce": nonce, "url": url});
    match signer {
        Signer::Jwk => protected["jwk"] = jwk(key)?,
        Signer::Kid(k) => protected["kid"] = Value::String(k.to_string()),
    }
    let protected = b64(protected.to_string().as_bytes());
    let payload = match payload {
        Some(p) => b64(p.to_string().as_bytes()),
        None => String::new(),
    };
    let input = format!("{protected}.{payload}");
    let digest = hash(MessageDigest::sha256(), input.as_bytes()).map_err(|e| e.to_string())?;
    let ec = key.ec_key().map_err(|e| e.to_string())?;
    let sig = EcdsaSig::sign(&digest, &ec).map_err(|e| e.to_string())?;
    // JWS wants r || s, each padded to the curve size, not DER.
    let mut raw = sig.r().to_vec_padded(32).map_err(|e| e.to_string())?;
    raw.extend(sig.s().to_vec_padded(32).map_err(|e| e.to_string())?);
    let body = json!({"protected": protected, "payload": payload, "signature": b64(&raw)});
    Ok(body.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_with_the_jwk() {
        let key = new_key().unwrap();
        let body = sign(
            &key,
            Signer::Kid("k"),
            "n1",
            "https://a/b",
            Some(&json!({})),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let input = format!(
            "{}.{}",
            v["protected"].as_str().unwrap(),
            v["payload"].as_str().unwrap()
        );
        let raw = URL_SAFE_NO_PAD
            .decode(v["signature"].as_str().unwrap())
            .unwrap();
        assert_eq!(raw.len(), 64);
        let sig = EcdsaSig::from_private_components(
            BigNum::from_slice(&raw[..32]).unwrap(),
            BigNum::from_slice(&raw[32..]).unwrap(),
        )
        .unwrap();
        let digest = hash(MessageDigest::sha256(), input.as_bytes()).unwrap();
        assert!(sig.verify(&digest, &key.ec_key().unwrap()).unwrap());
        let t = thumbprint(&key).unwrap();
        assert_eq!(t.len(), 43);
    }
}
