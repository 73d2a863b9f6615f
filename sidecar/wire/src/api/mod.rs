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
            "/v1/models" => Operation::ListModels,
            _ => return Err(ApiError::unknown_url(method, path)),
        };
        let expected = if op == Operation::ListModels {
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

    pub fn flavour(self) -> Flavour {
        if self == Operation::Messages {
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
    }
}
