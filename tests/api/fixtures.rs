//! Small builders for the resources most tests need, and error inspection.
use coursewire_proto::v1::*;
use tonic::{Code, Status};

use tonic_types::StatusExt;

use crate::harness::Clients;

pub async fn domain(c: &mut Clients, host: &str) -> Domain {
    let d = Domain { hostname: host.into(), name: "Academy".into(), ..Default::default() };
    c.domains
        .create_domain(CreateDomainRequest { domain: Some(d), request_id: String::new() })
        .await
        .unwrap()
        .into_inner()
}

pub async fn user(c: &mut Clients, email: &str) -> User {
    let u = User { email: email.into(), first_name: "Ada".into(), last_name: "Lovelace".into(), ..Default::default() };
    c.users.create_user(CreateUserRequest { user: Some(u), ..Default::default() }).await.unwrap().into_inner()
}

/// A course with `required` required lessons and one optional lesson.
pub async fn course(c: &mut Clients, required: usize) -> Course {
    let mut lessons: Vec<Lesson> =
        (0..required).map(|i| Lesson { title: format!("Lesson {i}"), required: true, ..Default::default() }).collect();
    lessons.push(Lesson { title: "Extra reading".into(), required: false, ..Default::default() });
    let course = Course { title: "Safety 101".into(), description: "Basics".into(), lessons, ..Default::default() };
    c.courses
        .create_course(CreateCourseRequest { course: Some(course), request_id: String::new() })
        .await
        .unwrap()
        .into_inner()
}

pub async fn publish(c: &mut Clients, course_id: &str, domain_id: &str) -> PublishedCourse {
    let p = PublishedCourse { course_id: course_id.into(), domain_id: domain_id.into(), ..Default::default() };
    c.published
        .create_published_course(CreatePublishedCourseRequest { published_course: Some(p), request_id: String::new() })
        .await
        .unwrap()
        .into_inner()
}

pub async fn enroll(c: &mut Clients, user_id: &str, published_course_id: &str) -> Result<Enrollment, Status> {
    let r = CreateEnrollmentRequest {
        user_id: user_id.into(),
        published_course_id: published_course_id.into(),
        ..Default::default()
    };
    c.enrollments.create_enrollment(r).await.map(|r| r.into_inner())
}

/// Everything needed to enroll: a domain, a user, a 2-lesson course published to the domain.
pub struct World {
    pub domain: Domain,
    pub user: User,
    pub course: Course,
    pub published: PublishedCourse,
}

pub async fn world(c: &mut Clients) -> World {
    let domain = domain(c, "learn.acme.com").await;
    let user = user(c, "ada@example.com").await;
    let course = course(c, 2).await;
    let published = publish(c, &course.id, &domain.id).await;
    World { domain, user, course, published }
}

/// A key with every scope (scopes are never implied).
pub fn star_key() -> ApiKey {
    ApiKey { scopes: vec!["*".into()], ..Default::default() }
}

/// The ErrorInfo reason of a failed call.
pub fn reason(s: &Status) -> String {
    s.get_details_error_info()
        .map(|i| {
            assert_eq!(i.domain, "coursewire");
            i.reason
        })
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"))
}

/// Asserts code and reason of a failed call.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, want: &str) -> Status {
    let s = r.expect_err("call should fail");
    assert_eq!(s.code(), code, "{s:?}");
    assert_eq!(reason(&s), want, "{s:?}");
    s
}

pub fn violations(s: &Status) -> Vec<String> {
    s.get_details_bad_request().map(|b| b.field_violations.into_iter().map(|v| v.field).collect()).unwrap_or_default()
}

/// A value of the failed call's ErrorInfo metadata.
pub fn meta(s: &Status, key: &str) -> Option<String> {
    s.get_details_error_info().and_then(|i| i.metadata.get(key).cloned())
}

pub fn timestamp(ms: i64) -> pbjson_types::Timestamp {
    coursewire_api::clock::to_timestamp(ms)
}

/// Bytes in, bytes out: for sending a body that is not a valid message.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = prost::bytes::Buf::remaining(buf);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

/// Calls the unary method `path` (`/coursewire.v1.UserService/CreateUser`) with `body` as the
/// message bytes, authenticated with `key`.
pub async fn raw_call(h: &crate::harness::Harness, key: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let service = tonic::service::interceptor::InterceptedService::new(h.channel(), h.with_key(key));
    let mut grpc = tonic::client::Grpc::new(service);
    grpc.ready().await.unwrap();
    grpc.unary(tonic::Request::new(body), path.parse().unwrap(), RawCodec).await.map(|r| r.into_inner())
}
