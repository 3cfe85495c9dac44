//! The OpenAPI 3.1 document of a shape, derived from what enforces it: the route table
//! ([`Endpoint`]) says which paths and methods exist and who may call them, the request types'
//! JSON Schemas (derived with their serde attributes: required fields, unknown fields refused)
//! and their limits (the same constants the flows check) say what is accepted, and the shape's
//! settings fill in what it decides at run time (whether reads need the token, upload limits).
//! Every status an operation can answer is listed with the error body's schema.

use glimpse_contracts::api::{BrowseParams, SearchParams, SimilarParams};
use glimpse_core::browse::BrowsePage;
use glimpse_core::flows::UploadDeclaration;
use glimpse_core::photo::{AlbumName, ImageFormat, Photo, PhotoId, UploadId};
use glimpse_core::search::{QueryId, SearchLogEntry, SearchRequest, SearchResponse};
use http::{Method, StatusCode};
use schemars::JsonSchema;
use schemars::r#gen::{SchemaGenerator, SchemaSettings};
use schemars::schema::{Schema, SchemaObject};
use serde_json::{Map, Value, json};

use crate::endpoints::ID;
use crate::{
    Access, AlbumList, AlbumParams, Click, Clicked, Endpoint, Settings, StartedUpload, Status,
    UploadLimits, Uploaded,
};

/// What a shape decides at run time that its document states.
#[derive(Clone, Debug)]
pub struct Facts {
    /// The token settings (whether reads need it).
    pub settings: Settings,
    /// How large an original may be, by each way of sending it.
    pub uploads: UploadLimits,
    /// Whether originals are a redirect to storage (else their bytes).
    pub originals_by_redirect: bool,
}

/// An OpenAPI document being written: its paths and the schemas they refer to.
pub struct Document {
    schemas: SchemaGenerator,
    paths: Map<String, Value>,
    protect_reads: bool,
}

/// One operation of a path.
pub struct Operation {
    fields: Map<String, Value>,
    responses: Map<String, Value>,
    parameters: Vec<Value>,
}

/// Statuses most operations can answer: a backend failed (500) or is unavailable (503).
const BACKEND_ERRORS: [StatusCode; 2] = [
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::SERVICE_UNAVAILABLE,
];

impl Document {
    /// An empty document for a shape whose reads need the token when `protect_reads`.
    pub fn new(protect_reads: bool) -> Self {
        let settings = SchemaSettings::draft2019_09().with(|s| {
            s.definitions_path = "#/components/schemas/".to_owned();
        });
        Self {
            schemas: SchemaGenerator::new(settings),
            paths: Map::new(),
            protect_reads,
        }
    }

    /// The schema of `T`: a reference to it under `components/schemas`, or inline.
    pub fn schema<T: JsonSchema>(&mut self) -> Value {
        to_value(&self.schemas.subschema_for::<T>())
    }

    /// Adds `operation` at `path` for `method`; `access` decides whether it needs the token (and
    /// may answer 401).
    pub fn add(&mut self, path: &str, method: &Method, access: Access, mut operation: Operation) {
        let needs_token = match access {
            Access::Open => false,
            Access::Read => self.protect_reads,
            Access::Write => true,
        };
        let security = if needs_token {
            operation = operation.errors(&[StatusCode::UNAUTHORIZED]);
            json!([{"bearer": []}])
        } else {
            json!([])
        };
        let mut fields = operation.fields;
        fields.insert("operationId".to_owned(), json!(operation_id(method, path)));
        fields.insert("security".to_owned(), security);
        if !operation.parameters.is_empty() {
            fields.insert("parameters".to_owned(), Value::Array(operation.parameters));
        }
        fields.insert("responses".to_owned(), Value::Object(operation.responses));
        let item = self
            .paths
            .entry(path.to_owned())
            .or_insert_with(|| json!({}));
        if let Value::Object(item) = item {
            item.insert(method.as_str().to_ascii_lowercase(), Value::Object(fields));
        }
    }

    /// Adds error answers that every operation can give, or those of unsafe methods only
    /// (`writes_only`), to the operations added so far.
    pub fn errors_everywhere(&mut self, statuses: &[StatusCode], writes_only: bool) {
        for item in self.paths.values_mut().filter_map(Value::as_object_mut) {
            for (method, operation) in item.iter_mut() {
                let safe = method == "get" || method == "head";
                if writes_only && safe {
                    continue;
                }
                for status in statuses {
                    operation["responses"][status.as_u16().to_string()] =
                        json!({"$ref": "#/components/responses/Error"});
                }
            }
        }
    }

    /// The document.
    pub fn finish(mut self) -> Value {
        let schemas: Map<String, Value> = self
            .schemas
            .take_definitions()
            .into_iter()
            .map(|(name, schema)| (name, to_value(&schema)))
            .collect();
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Glimpse",
                "version": env!("CARGO_PKG_VERSION"),
                "description": DESCRIPTION,
            },
            "paths": self.paths,
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": schemas,
                "headers": {
                    "Retry-After": {
                        "description": "Seconds to wait before trying again.",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    "Location": {
                        "description": "Where the resource is.",
                        "schema": {"type": "string"},
                    },
                },
                "responses": {
                    "Error": {
                        "description": "An error with a message a person can act on.",
                        "content": {"application/json": {"schema": error_schema()}},
                    },
                    "Unavailable": {
                        "description": "A backend is unavailable: retry after `Retry-After`.",
                        "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
                        "content": {"application/json": {"schema": error_schema()}},
                    },
                },
            },
        })
    }
}

impl Operation {
    /// An operation that `summary` describes, grouped under `tag`.
    pub fn new(summary: &str, tag: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("summary".to_owned(), json!(summary));
        fields.insert("tags".to_owned(), json!([tag]));
        Self {
            fields,
            responses: Map::new(),
            parameters: Vec::new(),
        }
    }

    /// Its longer description.
    pub fn description(mut self, text: &str) -> Self {
        self.fields.insert("description".to_owned(), json!(text));
        self
    }

    /// A path parameter `name` of schema `T`.
    pub fn path_parameter<T: JsonSchema>(mut self, name: &str) -> Self {
        let schema = inline_schema::<T>();
        self.parameters.push(json!({
            "name": name, "in": "path", "required": true, "schema": schema,
        }));
        self
    }

    /// The query parameters the fields of `T` are (as `serde_urlencoded` reads them).
    pub fn query_parameters<T: JsonSchema>(mut self) -> Self {
        let root = query_generator().into_root_schema_for::<T>();
        let object = root.schema.object.unwrap_or_default();
        for (name, schema) in object.properties {
            let mut schema = to_value(&schema);
            let description = schema
                .as_object_mut()
                .and_then(|s| s.remove("description"))
                .unwrap_or(Value::Null);
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": object.required.contains(&name),
                "schema": schema,
            });
            if !description.is_null() {
                parameter["description"] = description;
            }
            self.parameters.push(parameter);
        }
        self
    }

    /// Narrows the path parameter `name` to `values`.
    pub fn enumerate_path_parameter(&mut self, name: &str, values: &[&str]) {
        for parameter in &mut self.parameters {
            if parameter["name"] == name {
                parameter["schema"] = json!({"type": "string", "enum": values});
            }
        }
    }

    /// Makes the request body optional.
    pub fn optional_body(mut self) -> Self {
        if let Some(body) = self.fields.get_mut("requestBody") {
            body["required"] = json!(false);
        }
        self
    }

    /// A request body in any of `content` (media type → schema).
    pub fn body(mut self, content: Value) -> Self {
        let content: Map<String, Value> = match content {
            Value::Object(map) => map
                .into_iter()
                .map(|(media, schema)| (media, json!({ "schema": schema })))
                .collect(),
            _ => Map::new(),
        };
        self.fields.insert(
            "requestBody".to_owned(),
            json!({"required": true, "content": content}),
        );
        self.errors(&[StatusCode::PAYLOAD_TOO_LARGE])
    }

    /// A JSON request body of schema `schema`.
    pub fn json_body(self, schema: Value) -> Self {
        self.body(json!({ "application/json": schema }))
    }

    /// An answer with `status`, what it means, and its content (media type → schema), if any.
    pub fn reply(mut self, status: StatusCode, description: &str, content: Option<Value>) -> Self {
        let mut response = json!({ "description": description });
        if let Some(Value::Object(content)) = content {
            let content: Map<String, Value> = content
                .into_iter()
                .map(|(media, schema)| (media, json!({ "schema": schema })))
                .collect();
            response["content"] = Value::Object(content);
        }
        self.responses.insert(status.as_u16().to_string(), response);
        self
    }

    /// A JSON answer with `status` of schema `schema`.
    pub fn json_reply(self, status: StatusCode, description: &str, schema: Value) -> Self {
        self.reply(
            status,
            description,
            Some(json!({ "application/json": schema })),
        )
    }

    /// Links the answer with `status` (already added) to the operation at `method` and `path`,
    /// whose path parameter `id` is `id` (a runtime expression, e.g. `$response.body#/id`).
    pub fn link(mut self, status: StatusCode, method: &Method, path: &str, id: &str) -> Self {
        let target = operation_id(method, path);
        if let Some(response) = self.responses.get_mut(status.as_u16().to_string().as_str()) {
            response["links"][&target] = json!({"operationId": target, "parameters": {"id": id}});
        }
        self
    }

    /// Adds a header to the answer with `status` (already added).
    pub fn header(mut self, status: StatusCode, name: &str) -> Self {
        if let Some(response) = self.responses.get_mut(status.as_u16().to_string().as_str()) {
            response["headers"][name] = json!({ "$ref": format!("#/components/headers/{name}") });
        }
        self
    }

    /// Error answers with these statuses (the error body).
    pub fn errors(mut self, statuses: &[StatusCode]) -> Self {
        for status in statuses {
            let component = if *status == StatusCode::SERVICE_UNAVAILABLE {
                "Unavailable"
            } else {
                "Error"
            };
            self.responses.insert(
                status.as_u16().to_string(),
                json!({ "$ref": format!("#/components/responses/{component}") }),
            );
        }
        self
    }

    /// The errors of an operation on the shape's backends.
    pub fn backend_errors(self) -> Self {
        self.errors(&BACKEND_ERRORS)
    }
}

/// The id of the operation at `method` and `path`: `get_api_photos_id` for `GET /api/photos/{id}`.
fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for segment in path.split(|c: char| !c.is_ascii_alphanumeric()) {
        if !segment.is_empty() {
            id.push('_');
            id.push_str(segment);
        }
    }
    id
}

/// The error body: `{"error": {"code", "message", …}}`.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "Stable: switch on it."},
                    "message": {"type": "string", "description": "What went wrong and what to do."},
                    "position": {
                        "type": "integer",
                        "description": "For `invalid_query`: the character offset of the problem.",
                    },
                    "hint": {"type": "string", "description": "For `invalid_query`: what to type."},
                },
            },
        },
    })
}

fn to_value(schema: &Schema) -> Value {
    let mut value = serde_json::to_value(schema).unwrap_or(Value::Null);
    integral_bounds(&mut value);
    value
}

/// Writes the bounds of integer schemas as integers (schemars writes every bound as a float, and
/// a client taking `1.0` from the document would send it so).
fn integral_bounds(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if object.get("type") == Some(&json!("integer")) {
                for bound in ["minimum", "maximum"] {
                    if let Some(number) = object.get(bound).and_then(Value::as_f64)
                        && number.fract() == 0.0
                    {
                        object.insert(bound.to_owned(), json!(number as i64));
                    }
                }
            }
            object.values_mut().for_each(integral_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(integral_bounds),
        _ => {}
    }
}

/// Schemas of query and path parameters: inline, and an absent value is not `null`.
fn query_generator() -> SchemaGenerator {
    SchemaGenerator::new(SchemaSettings::draft2019_09().with(|s| {
        s.option_add_null_type = false;
        s.inline_subschemas = true;
    }))
}

fn inline_schema<T: JsonSchema>() -> Value {
    let root = query_generator().into_root_schema_for::<T>();
    let mut schema = to_value(&Schema::Object(SchemaObject {
        metadata: None,
        ..root.schema
    }));
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
    }
    schema
}

/// The binary body of an image: its media types, each a binary string.
fn image_content(schema: &Value) -> Map<String, Value> {
    ImageFormat::ALL
        .iter()
        .map(|format| (format.media_type().to_owned(), schema.clone()))
        .collect()
}

const DESCRIPTION: &str = "Self-hosted AI photo search. Operations that change photos need \
    `Authorization: Bearer <token>`; whether reads need it too is stated per operation \
    (`security`). Errors are `{\"error\": {\"code\", \"message\", …}}` with a message a person can \
    act on; a backend that is unavailable answers 503 with `Retry-After`. A method a path does not \
    serve is a 405 whose `Allow` header lists the ones it does; HEAD is answered like GET.";

/// The document of the endpoints a shape offers (`offers`), under `facts`.
pub fn document(facts: &Facts, offers: impl Fn(&Endpoint<'_>) -> bool) -> Document {
    let mut document = Document::new(facts.settings.protect_reads);
    for endpoint in Endpoint::ALL.iter().filter(|endpoint| offers(endpoint)) {
        for method in endpoint.methods() {
            let operation = operation(&mut document, facts, endpoint, method);
            document.add(
                &endpoint.template(),
                method,
                endpoint.access(method),
                operation,
            );
        }
    }
    document
}

/// The whole description of one endpoint and method.
fn operation(
    document: &mut Document,
    facts: &Facts,
    endpoint: &Endpoint<'_>,
    method: &Method,
) -> Operation {
    let bad_request = [StatusCode::BAD_REQUEST];
    match (endpoint, method) {
        (Endpoint::Health, _) => Operation::new("Liveness: the process answers.", "operations")
            .reply(
                StatusCode::OK,
                "`ok`",
                Some(json!({"text/plain": {"type": "string", "const": "ok"}})),
            ),
        (Endpoint::OpenApi, _) => Operation::new("This document.", "operations").json_reply(
            StatusCode::OK,
            "OpenAPI 3.1.",
            json!({"type": "object"}),
        ),
        (Endpoint::Status, _) => Operation::new(
            "The photos by indexing state: `photos.pending` is the work waiting for the workers \
             (uploads are kept and queued while no worker runs).",
            "operations",
        )
        .json_reply(StatusCode::OK, "The status.", document.schema::<Status>())
        .backend_errors(),
        (Endpoint::Albums, _) => Operation::new(
            "Every album with its photo count, by name (albums differing only in case are one).",
            "photos",
        )
        .json_reply(
            StatusCode::OK,
            "The albums.",
            document.schema::<AlbumList>(),
        )
        .backend_errors(),
        (Endpoint::Photos, &Method::POST) => upload_operation(document, facts),
        (Endpoint::Photos, _) => Operation::new(
            "Browse photos, newest first, page by page, with optional filters.",
            "photos",
        )
        .query_parameters::<BrowseParams>()
        .json_reply(StatusCode::OK, "A page.", document.schema::<BrowsePage>())
        .errors(&bad_request)
        .backend_errors(),
        (Endpoint::Photo(_), &Method::DELETE) => Operation::new(
            "Delete an uploaded photo: its original, vector and catalog entry. A photo of the \
             library folder is deleted by deleting its file (409).",
            "photos",
        )
        .path_parameter::<PhotoId>("id")
        .reply(StatusCode::NO_CONTENT, "Deleted.", None)
        .errors(&[
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::CONFLICT,
        ])
        .backend_errors(),
        (Endpoint::Photo(_), _) => Operation::new("A photo's record.", "photos")
            .path_parameter::<PhotoId>("id")
            .json_reply(StatusCode::OK, "The photo.", document.schema::<Photo>())
            .errors(&[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND])
            .backend_errors(),
        (Endpoint::Original(_), _) => {
            let operation = Operation::new(
                "The original file, as uploaded or in the library.",
                "photos",
            )
            .path_parameter::<PhotoId>("id");
            let operation = if facts.originals_by_redirect {
                operation
                    .reply(
                        StatusCode::FOUND,
                        "A short-lived URL of storage that serves the bytes.",
                        None,
                    )
                    .header(StatusCode::FOUND, "Location")
            } else {
                let binary = json!({"type": "string", "format": "binary"});
                operation.reply(
                    StatusCode::OK,
                    "The original's bytes.",
                    Some(Value::Object(image_content(&binary))),
                )
            };
            operation
                .errors(&[
                    StatusCode::BAD_REQUEST,
                    StatusCode::NOT_FOUND,
                    StatusCode::GONE,
                ])
                .backend_errors()
        }
        (Endpoint::Thumbnail(_), _) => Operation::new(
            "A JPEG thumbnail, at most 320 px on its longer side.",
            "photos",
        )
        .path_parameter::<PhotoId>("id")
        .reply(
            StatusCode::OK,
            "JPEG.",
            Some(json!({"image/jpeg": {"type": "string", "format": "binary"}})),
        )
        .errors(&[
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::GONE,
            StatusCode::UNPROCESSABLE_ENTITY,
        ])
        .backend_errors(),
        (Endpoint::Similar(_), _) => Operation::new(
            "Photos that look like this one (the query `like:<id>`).",
            "search",
        )
        .path_parameter::<PhotoId>("id")
        .query_parameters::<SimilarParams>()
        .json_reply(
            StatusCode::OK,
            "Ranked results.",
            document.schema::<SearchResponse>(),
        )
        .errors(&[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND])
        .backend_errors(),
        (Endpoint::Retry(_), _) => Operation::new(
            "Queue a failed photo for indexing again (after fixing what made it fail).",
            "photos",
        )
        .path_parameter::<PhotoId>("id")
        .json_reply(
            StatusCode::OK,
            "The photo, pending again.",
            document.schema::<Photo>(),
        )
        .errors(&[
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::CONFLICT,
        ])
        .backend_errors(),
        (Endpoint::Uploads, _) => {
            let mut declaration = document.schema::<UploadDeclaration>();
            if let Some(max) = facts.uploads.staged_max_bytes {
                declaration["properties"]["bytes"]["maximum"] = json!(max);
            }
            Operation::new(
                "Start an upload straight to storage (for originals too large for a request): \
                 declare its size and type, PUT it to the URL handed back, then complete it.",
                "photos",
            )
            .json_body(declaration)
            .json_reply(
                StatusCode::CREATED,
                "The storage URL, bound to the declared size and type.",
                document.schema::<StartedUpload>(),
            )
            .header(StatusCode::CREATED, "Location")
            .errors(&bad_request)
            .backend_errors()
        }
        (Endpoint::Upload(_), _) => added_photo(
            document,
            Operation::new(
                "Complete an upload put into storage: the photo is checked and queued for \
                 indexing.",
                "photos",
            )
            .path_parameter::<UploadId>("id")
            .query_parameters::<AlbumParams>(),
        )
        .errors(&[
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::UNPROCESSABLE_ENTITY,
        ])
        .backend_errors(),
        (Endpoint::Search, &Method::POST) => search_operation(document, "Search (JSON body).")
            .json_body(document.schema::<SearchRequest>()),
        (Endpoint::Search, _) => {
            search_operation(document, "Search.").query_parameters::<SearchParams>()
        }
        (Endpoint::SearchLog(_), _) => {
            Operation::new("A logged search with its results and clicks.", "search")
                .path_parameter::<QueryId>("id")
                .json_reply(
                    StatusCode::OK,
                    "The log entry.",
                    document.schema::<SearchLogEntry>(),
                )
                .errors(&[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND])
                .backend_errors()
        }
        (Endpoint::Clicks(_), _) => Operation::new(
            "Record a click on a result of a search; only ranks of a real response are accepted.",
            "search",
        )
        .path_parameter::<QueryId>("id")
        .json_body(document.schema::<Click>())
        .json_reply(StatusCode::OK, "Recorded.", document.schema::<Clicked>())
        .errors(&[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND])
        .backend_errors(),
    }
}

fn search_operation(document: &mut Document, summary: &str) -> Operation {
    let logged = Endpoint::SearchLog(ID).template();
    Operation::new(summary, "search")
        .description(
            "Ranked by how well each photo matches the query's terms; `like:<id>` names a photo \
             to resemble (404 when it is not indexed).",
        )
        .json_reply(
            StatusCode::OK,
            "Ranked results.",
            document.schema::<SearchResponse>(),
        )
        .link(
            StatusCode::OK,
            &Method::GET,
            &logged,
            "$response.body#/query_id",
        )
        .errors(&[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND])
        .backend_errors()
}

/// The answers of an upload (202 for a new photo, 200 for bytes the catalog had), linked to what
/// can be done with the photo they name.
fn added_photo(document: &mut Document, operation: Operation) -> Operation {
    let operation = operation
        .json_reply(
            StatusCode::ACCEPTED,
            "A new photo, queued for indexing.",
            document.schema::<Uploaded>(),
        )
        .json_reply(
            StatusCode::OK,
            "A photo the catalog had (same bytes).",
            document.schema::<Uploaded>(),
        );
    let photo = Endpoint::Photo(ID).template();
    let original = Endpoint::Original(ID).template();
    let retry = Endpoint::Retry(ID).template();
    [StatusCode::ACCEPTED, StatusCode::OK]
        .into_iter()
        .fold(operation, |operation, status| {
            operation
                .header(status, "Location")
                .link(status, &Method::GET, &photo, "$response.body#/id")
                .link(status, &Method::DELETE, &photo, "$response.body#/id")
                .link(status, &Method::GET, &original, "$response.body#/id")
                .link(status, &Method::POST, &retry, "$response.body#/id")
        })
}

fn upload_operation(document: &mut Document, facts: &Facts) -> Operation {
    let limit = facts.uploads.max_bytes;
    let binary = json!({"type": "string", "format": "binary", "maxLength": limit});
    let mut content = image_content(&binary);
    let mut operation = Operation::new("Upload a photo in the request's body.", "photos");
    content.insert(
        "multipart/form-data".to_owned(),
        json!({
            "type": "object",
            "required": ["file"],
            "additionalProperties": false,
            "properties": {
                "file": {
                    "type": "string",
                    "format": "binary",
                    "description": "The image (one file per request).",
                },
                "album": document.schema::<AlbumName>(),
            },
        }),
    );
    let image_types: Vec<&str> = ImageFormat::ALL.iter().map(|f| f.media_type()).collect();
    operation = operation.body(Value::Object(content));
    if let Some(form) = operation
        .fields
        .get_mut("requestBody")
        .and_then(|body| body["content"].get_mut("multipart/form-data"))
    {
        form["encoding"] = json!({"file": {"contentType": image_types.join(", ")}});
    }
    operation = operation
        .description(&format!(
            "The image's bytes as the body (with its media type), or a form with one file and an \
             optional album. Bodies up to {limit} bytes; larger originals go straight to storage \
             where the shape offers POST /api/uploads. The bytes must be an image Glimpse \
             indexes (415 otherwise, 422 when it cannot be read)."
        ))
        .query_parameters::<AlbumParams>();
    added_photo(document, operation)
        .errors(&[
            StatusCode::BAD_REQUEST,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::UNPROCESSABLE_ENTITY,
        ])
        .backend_errors()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(protect_reads: bool) -> Facts {
        Facts {
            settings: Settings {
                token: "t".repeat(32),
                protect_reads,
            },
            uploads: UploadLimits {
                max_bytes: 1024,
                staged_max_bytes: Some(4096),
            },
            originals_by_redirect: true,
        }
    }

    #[test]
    fn every_route_and_method_is_documented_with_its_statuses() {
        let document = document(&facts(false), |_| true).finish();
        for endpoint in Endpoint::ALL {
            for method in endpoint.methods() {
                let operation =
                    &document["paths"][endpoint.template()][method.as_str().to_lowercase()];
                let responses = operation["responses"].as_object().expect("responses");
                assert!(
                    responses
                        .keys()
                        .any(|status| status.starts_with('2') || status.starts_with('3')),
                    "{method} {endpoint:?} says what it answers on success"
                );
                let writes = endpoint.access(method) == Access::Write;
                assert_eq!(
                    responses.contains_key("401"),
                    writes,
                    "{method} {endpoint:?}"
                );
            }
        }
        let declaration = &document["components"]["schemas"]["UploadDeclaration"];
        assert_eq!(declaration["properties"]["bytes"]["minimum"], json!(1));
        assert_eq!(declaration["additionalProperties"], json!(false));
        let search = &document["components"]["schemas"]["SearchRequest"];
        assert_eq!(search["properties"]["top_k"]["maximum"], json!(200));
        assert_eq!(search["required"], json!(["query"]));
    }

    #[test]
    fn private_reads_are_documented_as_needing_the_token() {
        let document = document(&facts(true), |_| true).finish();
        let browse = &document["paths"]["/api/photos"]["get"];
        assert_eq!(browse["security"], json!([{"bearer": []}]));
        assert!(browse["responses"]["401"].is_object());
        assert_eq!(document["paths"]["/healthz"]["get"]["security"], json!([]));
    }
}
