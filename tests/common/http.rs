//! The HTTP side of the tests: `serve` started in-process on a free port,
//! and a blocking HTTP client (ureq) run off the async runtime.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sms_alerts::settings::ServeSettings;
use sms_alerts::store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A server on a free port, over the queue of `store`.
pub struct Server {
    pub base: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), sms_alerts::serve::ServeError>>,
}

impl Server {
    pub async fn start(store: &Store, settings: ServeSettings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let base = format!("http://{}", listener.local_addr().expect("bound"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sms_alerts::serve::run(
            store.clone(),
            settings,
            listener,
            shutdown.clone(),
        ));
        Self {
            base,
            shutdown,
            task,
        }
    }

    /// Stops the server as a signal would, and waits until it has stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops")
            .expect("joins")
            .expect("stops cleanly");
    }

    pub async fn post(&self, body: &str, headers: &[(&str, &str)]) -> Answer {
        self.request("POST", "/api/v1/produce", Some(body.to_owned()), headers)
            .await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        let method = method.to_owned();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tokio::task::spawn_blocking(move || http(&method, &url, body, &headers))
            .await
            .expect("the request thread")
            .expect("the server answers")
    }
}

/// An HTTP answer: status, headers (lower-case names) and body as JSON
/// (`Value::Null` when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

pub fn http(
    method: &str,
    url: &str,
    body: Option<String>,
    headers: &[(String, String)],
) -> Result<Answer, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut response = match body {
        Some(body) => {
            let mut request = agent.post(url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let _ = method;
            request.send(body)?
        }
        None => {
            let mut request = agent.get(url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.call()?
        }
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let text = response.body_mut().read_to_string()?;
    Ok(Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    })
}
