//! Requests to Airflow's API: URLs under `base_url`, the token (fetched from
//! `POST /auth/token` with the password as it is in its file now, or given), one
//! renewal when Airflow answers 401, and the classification of what it answers.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::sink::http::{self, Redactor};
use crate::sink::{Delivery, classify_http_status};
use crate::value::{HttpUrl, Secret, SecretRef};

/// How requests authenticate.
#[derive(Clone)]
pub(super) enum Auth {
    /// No `Authorization` header (an Airflow that lets everyone in).
    None,
    /// A token given in the config, read for every request.
    Static(SecretRef),
    /// A username and password exchanged for a token, kept until Airflow refuses it.
    /// The password is read each time a token is fetched, so a fixed password file is
    /// picked up by the next attempt.
    Password { username: String, password: SecretRef, token: Option<Secret> },
}

/// Why a request did not get the answer it needed: the delivery outcome to report.
pub(super) type Failed = Delivery;

/// A request that got no answer it could use.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SendError {
    /// It did not reach Airflow, or Airflow refused it: nothing happened there.
    Failed(Failed),
    /// It may have reached Airflow and done its work there without the answer coming
    /// back (a timeout, a connection closed after sending, a 5xx): whether it did is
    /// unknown until looked up.
    Unknown(Failed),
}

impl SendError {
    /// The delivery outcome to report.
    pub(super) fn into_failed(self) -> Failed {
        match self {
            SendError::Failed(failed) | SendError::Unknown(failed) => failed,
        }
    }
}

/// Airflow's API as the sink calls it. A clone starts without a token of its own.
pub(super) struct Api {
    pub(super) base: reqwest::Url,
    /// `base` as logs may show it, without a trailing `/`.
    shown: String,
    pub(super) auth: Auth,
    /// How long one request may take.
    pub(super) timeout: Duration,
    /// The delay of a failure an operator must fix.
    pub(super) slow_retry: Duration,
    /// The secrets sent so far (password, tokens), kept out of what Airflow answers.
    redactor: Redactor,
    /// The last request got no answer, or a gateway's 502/503/504: Airflow itself was
    /// out of reach (as opposed to answering, with an error of its own).
    pub(super) unreachable: bool,
}

impl Api {
    pub(super) fn new(base: &HttpUrl, auth: Auth, timeout: Duration, slow_retry: Duration) -> Self {
        Api {
            base: base.url().clone(),
            shown: base.to_string().trim_end_matches('/').to_string(),
            auth,
            timeout,
            slow_retry,
            redactor: Redactor::default(),
            unreachable: false,
        }
    }

    /// `base_url` joined with an absolute API path (keeping any path prefix of its own).
    pub(super) fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url.set_query(None);
        url
    }

    /// The URL of `path` as messages show it: one URL, without user info or query.
    pub(super) fn shown(&self, path: &str) -> String {
        format!("{}{path}", self.shown)
    }

    /// Airflow's base URL as messages show it.
    pub(super) fn base_shown(&self) -> &str {
        &self.shown
    }

    /// A second handle on the same API with its own token (for work beside the sink's
    /// own deliveries).
    pub(super) fn fork(&self) -> Self {
        let auth = match &self.auth {
            Auth::Password { username, password, .. } => {
                Auth::Password { username: username.clone(), password: password.clone(), token: None }
            }
            other => other.clone(),
        };
        Api {
            base: self.base.clone(),
            shown: self.shown.clone(),
            auth,
            timeout: self.timeout,
            slow_retry: self.slow_retry,
            redactor: Redactor::default(),
            unreachable: false,
        }
    }

    /// A failure that an operator must fix; the batch is held and retried slowly.
    pub(super) fn needs_operator(&self, reason: String) -> Failed {
        Delivery::NeedsAttention { reason, after: Some(self.slow_retry) }
    }

    /// The shared client for the base URL (a missing trust store needs an operator).
    fn client(&self) -> Result<reqwest::Client, Failed> {
        http::client_for(&self.base)
            .map_err(|problem| self.needs_operator(format!("{}: {problem}", self.shown)))
    }

    /// Classifies an answer that is not what the call wanted: its status the way every
    /// HTTP sink does (credentials refused need an operator, at `slow_retry`), with the
    /// start of the body, redacted.
    pub(super) async fn failure(&self, response: reqwest::Response, what: &str) -> Failed {
        match http::classify_response(response, what, &self.redactor).await {
            Delivery::NeedsAttention { reason, .. } => self.needs_operator(reason),
            other => other,
        }
    }

    /// The token for the next request, fetching one if needed.
    async fn token(&mut self) -> Result<Option<Secret>, Failed> {
        let (username, password) = match &self.auth {
            Auth::None => return Ok(None),
            Auth::Static(token) => {
                let token = token.read().map_err(|e| self.needs_operator(e.to_string()))?;
                self.redactor.add(token.expose());
                return Ok(Some(token));
            }
            Auth::Password { token: Some(token), .. } => return Ok(Some(token.clone())),
            Auth::Password { username, password, token: None } => (username.clone(), password.clone()),
        };
        let what = self.shown("/auth/token");
        let password = password.read().map_err(|e| self.needs_operator(e.to_string()))?;
        self.redactor.add(password.expose());
        let response = self
            .client()?
            .post(self.url("/auth/token"))
            .timeout(self.timeout)
            .json(&json!({"username": username, "password": password.expose()}))
            .send()
            .await
            .map_err(|e| {
                self.unreachable = true;
                http::transport_failure(e, &what, self.timeout)
            })?;
        let status = response.status();
        self.unreachable = matches!(status.as_u16(), 502..=504);
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let key = match &self.auth {
                Auth::Password { password, .. } => password.key(),
                _ => "password".to_string(),
            };
            return Err(self.needs_operator(format!(
                "{what} refused the password of user `{username}` (HTTP {}); check `username` and `{key}`",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(http::with_body(
                classify_http_status(status.as_u16(), None, &what),
                &body,
                &self.redactor,
            ));
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
        self.redactor.add(&token);
        let token = Secret::new(token);
        if let Auth::Password { token: slot, .. } = &mut self.auth {
            *slot = Some(token.clone());
        }
        Ok(Some(token))
    }

    /// Sends a request built by `build` (given the shared client), with the current
    /// token and the request timeout; on 401 fetches a new token once and sends it
    /// again. Returns any HTTP answer but 401. `what` names the call in messages.
    pub(super) async fn send(
        &mut self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failed> {
        self.send_telling(what, build).await.map_err(SendError::into_failed)
    }

    /// [`Api::send`], telling a request that never reached Airflow from one that may
    /// have (no answer after it was sent).
    pub(super) async fn send_telling(
        &mut self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let client = self.client().map_err(SendError::Failed)?;
        let mut renewed = false;
        loop {
            let mut request = build(&client).timeout(self.timeout);
            if let Some(token) = self.token().await.map_err(SendError::Failed)? {
                let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| {
                        SendError::Failed(self.needs_operator(
                            "the Airflow token holds characters a header cannot carry".into(),
                        ))
                    })?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            let response = request.send().await.map_err(|e| {
                self.unreachable = true;
                // Refused or unresolved connections sent nothing; anything later may
                // have left the request with Airflow.
                let sent = !(e.is_connect() || e.is_builder());
                let failed = http::transport_failure(e, what, self.timeout);
                if sent { SendError::Unknown(failed) } else { SendError::Failed(failed) }
            })?;
            self.unreachable = matches!(response.status().as_u16(), 502..=504);
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
                    return Err(SendError::Failed(self.needs_operator(format!(
                        "{what} answered HTTP 401: the token is refused; check the sink's credentials"
                    ))));
                }
            }
        }
    }

    /// `GET url` and its JSON answer. Any other answer is a failure, classified; a 404
    /// is `Ok(None)`.
    pub(super) async fn get_json<T: DeserializeOwned>(
        &mut self,
        url: reqwest::Url,
        what: &str,
    ) -> Result<Option<T>, Failed> {
        let response = self.send(what, |client| client.get(url.clone())).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.failure(response, what).await);
        }
        response.json::<T>().await.map(Some).map_err(|e| {
            Delivery::retry(format!("{what} answered unexpected JSON: {}", http::error_chain(&e)))
        })
    }

    /// True when Airflow's health endpoint (`/api/v2/monitor/health`, no credentials
    /// needed) answers 200.
    pub(super) async fn healthy(&self) -> bool {
        let Ok(client) = http::client_for(&self.base) else { return false };
        let request = client.get(self.url("/api/v2/monitor/health")).timeout(self.timeout);
        request.send().await.is_ok_and(|r| r.status().is_success())
    }
}
