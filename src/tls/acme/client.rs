//! The RFC 8555 exchanges of one order: directory, nonce, account, order, HTTP-01
//! authorizations, finalize with a CSR, download. Errors carry the server's problem
//! document (RFC 7807) as it sent it, so that the log says what the CA objected to.

use super::http::{self, Response};
use super::jws::{self, Signer};
use crate::config::acme::Challenge;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::ssl::SslConnector;
use openssl::stack::Stack;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::X509ReqBuilder;
use serde_json::{json, Value};
use std::time::Duration;

/// How long an authorization or an order may stay pending before the attempt is given up
/// (and retried later with backoff).
const POLL_LIMIT: Duration = Duration::from_secs(90);

pub struct Client {
    tls: SslConnector,
    key: PKey<Private>,
    new_nonce: String,
    new_order: String,
    kid: String,
    nonce: Option<String>,
}

fn field<'a>(v: &'a Value, k: &str, what: &str) -> Result<&'a str, String> {
    v[k].as_str()
        .ok_or_else(|| format!("{what} has no {k}: {v}"))
}

fn json_body(r: &Response, what: &str) -> Result<Value, String> {
    serde_json::from_slice(&r.body).map_err(|e| format!("{what}: not JSON ({e})"))
}

/// The problem document of a failed exchange, as the server wrote it.
fn problem(what: &str, r: &Response) -> String {
    format!(
        "{what}: status {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body).trim()
    )
}

impl Client {
    /// Read the directory and register (or find again) the account of `key`.
    pub async fn login(
        tls: SslConnector,
        directory: &str,
        key: PKey<Private>,
        contact: Option<&str>,
    ) -> Result<Client, String> {
        let r = http::request(&tls, "GET", directory, None).await?;
        if r.status != 200 {
            return Err(problem("directory", &r));
        }
        let d = json_body(&r, "directory")?;
        let mut c = Client {
            new_nonce: field(&d, "newNonce", "directory")?.to_string(),
            new_order: field(&d, "newOrder", "directory")?.to_string(),
            kid: String::new(),
            nonce: None,
            tls,
            key,
        };
        let new_account = field(&d, "newAccount", "directory")?.to_string();
        let mut payload = json!({"termsOfServiceAgreed": true});
        if let Some(c) = contact {
            payload["contact"] = json!([c]);
        }
        let r = c.post(&new_account, Some(&payload), true).await?;
        if r.status != 200 && r.status != 201 {
            return Err(problem("new account", &r));
        }
        c.kid = r
            .header("location")
            .ok_or("new account: no Location")?
            .to_string();
        Ok(c)
    }

    async fn fresh_nonce(&mut self) -> Result<String, String> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let r = http::request(&self.tls, "HEAD", &self.new_nonce, None).await?;
        r.header("replay-nonce")
            .map(str::to_string)
            .ok_or_else(|| problem("new nonce", &r))
    }

    /// A signed POST; `None`: POST-as-GET. A `badNonce` refusal is retried with the fresh
    /// nonce it carries, as §6.5 asks clients to.
    async fn post(
        &mut self,
        url: &str,
        payload: Option<&Value>,
        jwk: bool,
    ) -> Result<Response, String> {
        let mut tries = 0;
        loop {
            let nonce = self.fresh_nonce().await?;
            let signer = if jwk {
                Signer::Jwk
            } else {
                Signer::Kid(&self.kid)
            };
            let body = jws::sign(&self.key, signer, &nonce, url, payload)?;
            let r = http::request(&self.tls, "POST", url, Some(&body)).await?;
            self.nonce = r.header("replay-nonce").map(str::to_string);
            let bad_nonce = r.status == 400
                && String::from_utf8_lossy(&r.body).contains("urn:ietf:params:acme:error:badNonce");
            tries += 1;
            if !bad_nonce || tries >= 3 {
                return Ok(r);
            }
        }
    }

    async fn get(&mut self, url: &str, what: &str) -> Result<Value, String> {
        let r = self.post(url, None, false).await?;
        if r.status != 200 {
            return Err(problem(what, &r));
        }
        json_body(&r, what)
    }

    /// Poll `url` until its status leaves `pending`/`processing`/`ready` (for an order
    /// that is not finalized yet, `ready` is a final state too: `stop_at_ready`).
    async fn poll(&mut self, url: &str, what: &str, stop_at_ready: bool) -> Result<Value, String> {
        let start = std::time::Instant::now();
        let mut wait = Duration::from_millis(250);
        loop {
            let v = self.get(url, what).await?;
            match v["status"].as_str() {
                Some("pending" | "processing") => {}
                Some("ready") if !stop_at_ready => {}
                Some(_) => return Ok(v),
                None => return Err(format!("{what}: no status: {v}")),
            }
            if start.elapsed() > POLL_LIMIT {
                return Err(format!(
                    "{what}: still {} after {POLL_LIMIT:?}",
                    v["status"]
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// One whole order for `names`, answering HTTP-01 through the shared token map.
    /// Returns the PEM chain and the new certificate's key.
    pub async fn order(
        &mut self,
        names: &[String],
        kind: Challenge,
    ) -> Result<(Vec<u8>, PKey<Private>), String> {
        let ids: Vec<Value> = names
            .iter()
            .map(|n| json!({"type": "dns", "value": n}))
            .collect();
        let new_order = self.new_order.clone();
        let r = self
            .post(&new_order, Some(&json!({"identifiers": ids})), false)
            .await?;
        if r.status != 201 {
            return Err(problem("new order", &r));
        }
        let order_url = r
            .header("location")
            .ok_or("new order: no Location")?
            .to_string();
        let order = json_body(&r, "new order")?;
        let thumb = jws::thumbprint(&self.key)?;
        let authzs: Vec<String> = order["authorizations"]
            .as_array()
            .ok_or_else(|| format!("order has no authorizations: {order}"))?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        for a in &authzs {
            self.authorize(a, &thumb, kind).await?;
        }
        let order = self.poll(&order_url, "order", true).await?;
        if order["status"] != "ready" {
            return Err(format!("order not ready after its authorizations: {order}"));
        }
        let key = jws::new_key()?;
        let csr = csr(&key, names)?;
        let finalize = field(&order, "finalize", "order")?.to_string();
        let r = self
            .post(&finalize, Some(&json!({"csr": jws::b64(&csr)})), false)
            .await?;
        if r.status != 200 {
            return Err(problem("finalize", &r));
        }
        let order = self.poll(&order_url, "order", true).await?;
        if order["status"] != "valid" {
            return Err(format!("order failed: {order}"));
        }
        let cert_url = field(&order, "certificate", "order")?.to_string();
        let r = self.post(&cert_url, None, false).await?;
        if r.status != 200 {
            return Err(problem("certificate download", &r));
        }
        Ok((r.body, key))
    }

    async fn authorize(&mut self, url: &str, thumb: &str, kind: Challenge) -> Result<(), String> {
        let authz = self.get(url, "authorization").await?;
        if authz["status"] == "valid" {
            return Ok(());
        }
        let name = authz["identifier"]["value"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let ty = match kind {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        };
        let ch = authz["challenges"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
            .ok_or_else(|| format!("authorization of {name} offers no {ty}: {authz}"))?;
        let token = field(ch, "token", "challenge")?.to_string();
        let ch_url = field(ch, "url", "challenge")?.to_string();
        let key_auth = format!("{token}.{thumb}");
        match kind {
            Challenge::Http01 => super::challenge::insert(&token, key_auth),
            Challenge::TlsAlpn01 => {
                super::challenge::insert_alpn(&name, super::alpn::challenge_cert(&name, &key_auth)?)
            }
        }
        let result = async {
            let r = self.post(&ch_url, Some(&json!({})), false).await?;
            if r.status != 200 {
                return Err(problem(&format!("challenge of {name}"), &r));
            }
            let authz = self.poll(url, "authorization", false).await?;
            if authz["status"] != "valid" {
                return Err(format!("authorization of {name} failed: {authz}"));
            }
            Ok(())
        }
        .await;
        match kind {
            Challenge::Http01 => super::challenge::remove(&token),
            Challenge::TlsAlpn01 => super::challenge::remove_alpn(&name),
        }
        result
    }
}

/// A CSR for `names`, all in the subjectAltName (the first also as the common name).
fn csr(key: &PKey<Private>, names: &[String]) -> Result<Vec<u8>, String> {
    let e = |e: openssl::error::ErrorStack| e.to_string();
    let mut b = X509ReqBuilder::new().map_err(e)?;
    let mut subject = openssl::x509::X509NameBuilder::new().map_err(e)?;
    if let Some(first) = names.first() {
        subject
            .append_entry_by_nid(openssl::nid::Nid::COMMONNAME, first)
            .map_err(e)?;
    }
    b.set_subject_name(&subject.build()).map_err(e)?;
    b.set_pubkey(key).map_err(e)?;
    let mut san = SubjectAlternativeName::new();
    for n in names {
        san.dns(n);
    }
    let mut exts = Stack::new().map_err(e)?;
    exts.push(san.build(&b.x509v3_context(None)).map_err(e)?)
        .map_err(e)?;
    b.add_extensions(&exts).map_err(e)?;
    b.sign(key, MessageDigest::sha256()).map_err(e)?;
    b.build().to_der().map_err(e)
}
