//! The HTTP answers the emulator sends, to `/v1` requests and `/_emulator/` controls alike.

use http_body_util::Full;
use hyper::Response;
use hyper::body::Bytes;
use hyper::header::HeaderValue;

pub type HttpResponse = Response<Full<Bytes>>;

/// An answer with a JSON body (`Content-Type: application/json`); an unknown status is sent as 500.
pub fn json_response(status: u16, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
