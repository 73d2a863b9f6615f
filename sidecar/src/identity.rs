//! The end user a request is billed to: a claim of a JWT the app forwards (verified
//! against a JWKS when one is configured, otherwise recorded as declared), or a
//! header. Errors name the failed check, never the token.

use http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use vigie_wire::api::ApiError;

/// Longest user name recorded (longer values are cut, never refused).
const MAX_USER: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct UserSettings {
    /// Header carrying the user name (e.g. `x-vigie-user`).
    pub header: Option<http::HeaderName>,
    /// Claim of the bearer JWT carrying the user (e.g. `sub`, `email`).
    pub jwt_claim: Option<String>,
    /// Header the JWT comes in (`authorization`, as `Bearer <jwt>`).
    pub jwt_header: Option<http::HeaderName>,
    /// Keys the JWT must be signed with; `None`: the claim is recorded as declared.
    pub jwks: Option<JwkSet>,
    /// Required `aud`, when set (with a JWKS).
    pub audience: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// Taken from a JWT whose signature was verified.
    pub verified: bool,
}

fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER)
        .collect()
}

fn bearer_jwt(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or(value)
        .trim();
    (token.split('.').count() == 3).then(|| token.to_string())
}

fn claim_text(claims: &serde_json::Value, claim: &str) -> Option<String> {
    match claims.get(claim)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The request's user. With a JWKS, a JWT that fails verification, or lacks the
/// claim, is refused (401); without one, an unreadable JWT is ignored and the header
/// (if any) is used.
pub fn identify(settings: &UserSettings, headers: &HeaderMap) -> Result<User, ApiError> {
    if let (Some(claim), Some(header)) = (&settings.jwt_claim, &settings.jwt_header)
        && let Some(token) = bearer_jwt(headers, header)
    {
        match &settings.jwks {
            Some(keys) => {
                let refuse = ApiError::invalid_user_token;
                let head = decode_header(&token).map_err(|_| refuse("malformed"))?;
                let jwk = match &head.kid {
                    Some(kid) => keys.find(kid),
                    None if keys.keys.len() == 1 => keys.keys.first(),
                    None => None,
                }
                .ok_or_else(|| refuse("signed with an unknown key"))?;
                let key = DecodingKey::from_jwk(jwk).map_err(|_| refuse("unusable key"))?;
                let mut validation = Validation::new(head.alg);
                validation.leeway = 30;
                match &settings.audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                let data = decode::<serde_json::Value>(&token, &key, &validation).map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind as K;
                    refuse(match e.kind() {
                        K::ExpiredSignature => "expired",
                        K::ImmatureSignature => "not yet valid",
                        K::InvalidSignature => "bad signature",
                        K::InvalidAudience => "wrong audience",
                        K::InvalidAlgorithm => "algorithm does not match the key",
                        _ => "unreadable claims",
                    })
                })?;
                let name = claim_text(&data.claims, claim)
                    .ok_or_else(|| refuse(&format!("no `{claim}` claim")))?;
                return Ok(User {
                    name: printable(&name),
                    verified: true,
                });
            }
            None => {
                // No keys: the claim is taken as declared (recorded unverified).
                let payload = token.split('.').nth(1).unwrap_or_default();
                if let Some(name) = base64_url(payload)
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|c| claim_text(&c, claim))
                {
                    return Ok(User {
                        name: printable(&name),
                        verified: false,
                    });
                }
            }
        }
    }
    let name = settings
        .header
        .as_ref()
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .map(printable)
        .unwrap_or_default();
    Ok(User {
        name,
        verified: false,
    })
}

fn base64_url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    const SIGNER: &str = include_str!("../../control-plane/testdata/sa-signer.pem");
    const FORGER: &str = include_str!("../../control-plane/testdata/forger.pem");
    const JWKS: &str = include_str!("../../control-plane/testdata/sa-jwks.json");

    fn jwt(key: &str, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("test-issuer-key".into());
        encode(
            &h,
            &claims,
            &EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn settings(jwks: bool) -> UserSettings {
        UserSettings {
            header: Some(http::HeaderName::from_static("x-vigie-user")),
            jwt_claim: Some("email".into()),
            jwt_header: Some(http::header::AUTHORIZATION),
            jwks: jwks.then(|| serde_json::from_str(JWKS).unwrap()),
            audience: None,
        }
    }

    #[test]
    fn verified_claim_wins_over_the_header() {
        let t = jwt(
            SIGNER,
            json!({"email": "ana@corp.example", "exp": now() + 60}),
        );
        let h = headers(&[
            ("authorization", format!("Bearer {t}")),
            ("x-vigie-user", "bob".into()),
        ]);
        let u = identify(&settings(true), &h).unwrap();
        assert_eq!(
            u,
            User {
                name: "ana@corp.example".into(),
                verified: true
            }
        );
        // Without keys the same claim is recorded as declared.
        let u = identify(&settings(false), &h).unwrap();
        assert_eq!(
            u,
            User {
                name: "ana@corp.example".into(),
                verified: false
            }
        );
    }

    #[test]
    fn with_a_jwks_bad_tokens_are_refused_without_echo() {
        for (t, reason) in [
            (
                jwt(FORGER, json!({"email": "x", "exp": now() + 60})),
                "bad signature",
            ),
            (
                jwt(SIGNER, json!({"email": "x", "exp": now() - 120})),
                "expired",
            ),
            (
                jwt(SIGNER, json!({"sub": "x", "exp": now() + 60})),
                "no `email` claim",
            ),
            ("e30.e30.e30".to_string(), "malformed"),
        ] {
            let h = headers(&[("authorization", format!("Bearer {t}"))]);
            let e = identify(&settings(true), &h).unwrap_err();
            assert_eq!(e.status, 401);
            assert!(e.message.contains(reason), "{reason}: {}", e.message);
            assert!(!e.message.contains(&t[..t.len().min(12)]));
        }
    }

    #[test]
    fn an_api_key_is_not_a_jwt_and_the_header_is_used() {
        let h = headers(&[
            (
                "authorization",
                "Bearer vigie-placeholder-not-a-credential".into(),
            ),
            ("x-vigie-user", "bob".into()),
        ]);
        assert_eq!(
            identify(&settings(true), &h).unwrap(),
            User {
                name: "bob".into(),
                verified: false
            }
        );
        assert_eq!(
            identify(&settings(true), &HeaderMap::new()).unwrap(),
            User::default()
        );
    }
}
