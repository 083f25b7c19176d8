//! Requests to Airflow's API: URLs under `base_url`, the token (fetched from
//! `POST /auth/token`, or given), and one renewal when Airflow answers 401.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use serde_json::json;

use crate::sink::http::{self, Secret};
use crate::sink::{Delivery, classify_http_status};

/// How requests authenticate.
pub(super) enum Auth {
    /// No `Authorization` header (an Airflow that lets everyone in).
    None,
    /// A token given in the config.
    Static(Secret),
    /// A username and password exchanged for a token, kept until Airflow refuses it.
    Password { username: String, password: Secret, token: Option<Secret> },
}

/// Why a request did not get the answer it needed: the delivery outcome to report.
pub(super) type Failed = Delivery;

/// Airflow's API as the sink calls it.
pub(super) struct Api {
    pub(super) client: reqwest::Client,
    pub(super) base: reqwest::Url,
    /// `base` as logs may show it.
    pub(super) shown: String,
    pub(super) auth: Auth,
    /// How long one request may take.
    pub(super) timeout: Duration,
    /// The delay of a failure an operator must fix.
    pub(super) slow_retry: Duration,
}

impl Api {
    /// `base_url` joined with an absolute API path (keeping any path prefix of its own).
    pub(super) fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url.set_query(None);
        url
    }

    /// A failure that an operator must fix; the batch is held and retried slowly.
    pub(super) fn needs_operator(&self, reason: String) -> Failed {
        Delivery::RetryLater { reason, after: Some(self.slow_retry) }
    }

    /// The token for the next request, fetching one if needed.
    async fn token(&mut self) -> Result<Option<String>, Failed> {
        let (username, password) = match &self.auth {
            Auth::None => return Ok(None),
            Auth::Static(token) => return Ok(Some(token.expose().to_string())),
            Auth::Password { token: Some(token), .. } => return Ok(Some(token.expose().to_string())),
            Auth::Password { username, password, token: None } => (username.clone(), password.clone()),
        };
        let what = format!("{} /auth/token", self.shown);
        let response = self
            .client
            .post(self.url("/auth/token"))
            .json(&json!({"username": username, "password": password.expose()}))
            .send()
            .await
            .map_err(|e| http::transport_failure(e, &what, self.timeout))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.needs_operator(format!(
                "{what} refused the password of user `{username}` (HTTP {}); check username and password_*",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(http::with_body(classify_http_status(status.as_u16(), None, &what), &body));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
        }
        let token = response
            .json::<TokenResponse>()
            .await
            .map_err(|_| Delivery::retry(format!("{what} answered without an `access_token`")))?
            .access_token;
        if let Auth::Password { token: slot, .. } = &mut self.auth {
            *slot = Some(Secret::new(token.clone()));
        }
        Ok(Some(token))
    }

    /// Sends a request built by `build`, with the current token; on 401 fetches a new
    /// token once and sends it again. Returns any HTTP answer but 401.
    pub(super) async fn send(
        &mut self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failed> {
        let mut renewed = false;
        loop {
            let mut request = build(&self.client);
            if let Some(token) = self.token().await? {
                let mut value =
                    reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        Delivery::permanent("the Airflow token holds characters a header cannot carry")
                    })?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            let response =
                request.send().await.map_err(|e| http::transport_failure(e, what, self.timeout))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            match &mut self.auth {
                // Expired: one new token, one more try.
                Auth::Password { token, .. } if !renewed => {
                    // `token`: a field log queries (and the end-to-end test) can match.
                    tracing::debug!(url = %self.shown, token = "refused", "Airflow refused the token (expired?); fetching a new one.");
                    *token = None;
                    renewed = true;
                }
                _ => {
                    return Err(self.needs_operator(format!(
                        "{what} answered HTTP 401: the token is refused; check the sink's credentials"
                    )));
                }
            }
        }
    }
}
