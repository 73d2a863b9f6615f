//! Wire formats the sidecar speaks: OpenAI-compatible and Anthropic Messages.

pub mod error;
pub mod request;
pub mod sse;
pub mod vllm;

pub use error::ApiError;

/// The API operations the sidecar understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic Messages API.
    Messages,
    ListModels,
    /// `GET /v1/models/{id}`: one model of the catalogue.
    RetrieveModel,
    /// Anthropic `POST /v1/messages/count_tokens`: answered by the sidecar's estimate.
    CountTokens,
}

/// The model id of a `GET /v1/models/{id}` path, percent-decoded (`org/model` ids are
/// sent as they are or as `org%2Fmodel`).
pub fn model_id(path: &str) -> Option<String> {
    let path = path
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let id = path.strip_prefix("/v1/models/")?;
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .ok()?;
    (!id.is_empty()).then(|| id.into_owned())
}

/// Error body and SSE error event format of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    OpenAi,
    Anthropic,
}

impl Operation {
    /// Maps method and path (query string ignored) to an operation.
    pub fn route(method: &http::Method, path: &str) -> Result<Operation, ApiError> {
        let path = path
            .split('?')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/');
        let op = match path {
            "/v1/chat/completions" => Operation::ChatCompletions,
            "/v1/completions" => Operation::Completions,
            "/v1/embeddings" => Operation::Embeddings,
            "/v1/messages" => Operation::Messages,
            "/v1/messages/count_tokens" => Operation::CountTokens,
            "/v1/models" => Operation::ListModels,
            p if p.starts_with("/v1/models/") => Operation::RetrieveModel,
            _ => return Err(ApiError::unknown_url(method, path)),
        };
        let expected = if matches!(op, Operation::ListModels | Operation::RetrieveModel) {
            http::Method::GET
        } else {
            http::Method::POST
        };
        if *method != expected {
            return Err(
                ApiError::method_not_allowed(method, path, &expected).with_flavour(op.flavour())
            );
        }
        Ok(op)
    }

    /// The `Allow` header of a path (for `OPTIONS`), `None` for a path the sidecar does
    /// not serve.
    pub fn allowed(path: &str) -> Option<&'static str> {
        if path == "*" {
            return Some("GET, POST, OPTIONS");
        }
        if Operation::route(&http::Method::GET, path).is_ok() {
            Some("GET, OPTIONS")
        } else if Operation::route(&http::Method::POST, path).is_ok() {
            Some("POST, OPTIONS")
        } else {
            None
        }
    }

    pub fn flavour(self) -> Flavour {
        if matches!(self, Operation::Messages | Operation::CountTokens) {
            Flavour::Anthropic
        } else {
            Flavour::OpenAi
        }
    }

    /// Name used in metrics and logs (`gen_ai.operation.name` where one exists).
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat",
            Operation::Completions => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::Messages => "messages",
            Operation::ListModels => "list_models",
            Operation::RetrieveModel => "retrieve_model",
            Operation::CountTokens => "count_tokens",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes() {
        assert_eq!(
            Operation::route(&Method::POST, "/v1/chat/completions").unwrap(),
            Operation::ChatCompletions
        );
        assert_eq!(
            Operation::route(&Method::POST, "/v1/chat/completions/?x=1").unwrap(),
            Operation::ChatCompletions
        );
        assert_eq!(
            Operation::route(&Method::GET, "/v1/models").unwrap(),
            Operation::ListModels
        );
        assert_eq!(
            Operation::route(&Method::POST, "/v1/messages")
                .unwrap()
                .flavour(),
            Flavour::Anthropic
        );
        assert_eq!(
            Operation::route(&Method::GET, "/v1/chat/completions")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            Operation::route(&Method::POST, "/v2/x").unwrap_err().status,
            404
        );
        assert_eq!(
            Operation::route(&Method::GET, "/v1/models/meta-llama/Llama-3-8B").unwrap(),
            Operation::RetrieveModel
        );
        assert_eq!(
            Operation::route(&Method::POST, "/v1/messages/count_tokens")
                .unwrap()
                .flavour(),
            Flavour::Anthropic
        );
        assert_eq!(
            Operation::route(&Method::POST, "/v1/models/x")
                .unwrap_err()
                .status,
            405
        );
    }

    #[test]
    fn options_name_the_methods_of_a_path() {
        assert_eq!(Operation::allowed("/v1/models"), Some("GET, OPTIONS"));
        assert_eq!(Operation::allowed("/v1/models/m"), Some("GET, OPTIONS"));
        assert_eq!(
            Operation::allowed("/v1/chat/completions"),
            Some("POST, OPTIONS")
        );
        assert_eq!(Operation::allowed("*"), Some("GET, POST, OPTIONS"));
        assert_eq!(Operation::allowed("/admin"), None);
    }

    #[test]
    fn model_ids_are_read_from_the_path() {
        assert_eq!(model_id("/v1/models/gpt-4o").as_deref(), Some("gpt-4o"));
        assert_eq!(
            model_id("/v1/models/meta-llama%2FLlama-3-8B/?x=1").as_deref(),
            Some("meta-llama/Llama-3-8B")
        );
        assert_eq!(
            model_id("/v1/models/meta-llama/Llama-3-8B").as_deref(),
            Some("meta-llama/Llama-3-8B")
        );
        assert_eq!(model_id("/v1/models/"), None);
        assert_eq!(model_id("/v1/models/%FF"), None, "not UTF-8");
    }
}
