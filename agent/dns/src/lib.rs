//! The DNS proxy's decisions, without sockets: a query for a name the mesh
//! knows (a Service, a ServiceEntry host, wildcards and `.global` hosts
//! included) is answered from the config with the service's address, or
//! the one allocated for it; anything else is forwarded unchanged to the
//! nameserver the pod asked.
use std::net::IpAddr;

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        RData, Record, RecordType,
        rdata::{A, AAAA},
    },
};
use strait_config::Config;

/// How long clients may cache a mesh answer: short, so config changes show
/// quickly.
const TTL: u32 = 30;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The answer to send back.
    Answer(Vec<u8>),
    /// Not a mesh name: pass the query upstream as it is.
    Forward,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a DNS message: {0}")]
    Parse(String),
    #[error("encoding the answer: {0}")]
    Encode(String),
}

/// Decides one query from a pod in `namespace` (services not exported to
/// it are not there). Only the exact name asked is looked up: the pod's
/// resolver applies its search path itself (and asks `reviews.default`
/// as `reviews.default.svc.cluster.local`), while a name it sends as it is
/// may be fully qualified (`github.com.`) and must not turn into a
/// service `github` of a namespace `com`.
pub fn answer(config: &Config, namespace: &str, query: &[u8]) -> Result<Outcome, Error> {
    let request = Message::from_vec(query).map_err(|e| Error::Parse(e.to_string()))?;
    if request.message_type() != MessageType::Query
        || request.op_code() != OpCode::Query
        || request.queries().len() != 1
    {
        return Ok(Outcome::Forward);
    }
    let question = &request.queries()[0];
    let qtype = question.query_type();
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return Ok(Outcome::Forward);
    }
    let name = question.name().to_ascii();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(addresses) = config.resolve(&name, namespace) else {
        return Ok(Outcome::Forward);
    };
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::NoError)
        .add_query(question.clone());
    // A known name without an address of the asked family is NODATA: the
    // name exists, so the client does not go on to search elsewhere.
    for ip in addresses {
        let rdata = match (qtype, ip) {
            (RecordType::A, IpAddr::V4(v4)) => RData::A(A(v4)),
            (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
            _ => continue,
        };
        response.add_answer(Record::from_rdata(question.name().clone(), TTL, rdata));
    }
    response
        .to_vec()
        .map(Outcome::Answer)
        .map_err(|e| Error::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{op::Query, rr::Name};
    use std::str::FromStr;

    const YAML: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: users, namespace: production}
spec:
  hosts: [user-service.production.global]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.2.0.7}]
";

    fn config() -> Config {
        let (report, config) = strait_config::check_text(std::path::Path::new("t.yaml"), YAML);
        config.unwrap_or_else(|| panic!("{report}"))
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_str(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn answers(outcome: Outcome) -> (ResponseCode, Vec<String>, u16) {
        let Outcome::Answer(bytes) = outcome else {
            panic!("forwarded")
        };
        let m = Message::from_vec(&bytes).unwrap();
        let data = m.answers().iter().map(|r| r.data().to_string()).collect();
        (m.response_code(), data, m.id())
    }

    #[test]
    fn mesh_names_are_answered() {
        let cfg = config();
        let (code, data, id) = answers(
            answer(
                &cfg,
                "x",
                &query("reviews.default.svc.cluster.local.", RecordType::A),
            )
            .unwrap(),
        );
        assert_eq!((code, id), (ResponseCode::NoError, 4242));
        assert_eq!(data, ["10.96.0.20"]);
        // Names are case-insensitive.
        let (_, data, _) = answers(
            answer(
                &cfg,
                "x",
                &query("Reviews.Default.SVC.cluster.local.", RecordType::A),
            )
            .unwrap(),
        );
        assert_eq!(data, ["10.96.0.20"]);
        let (_, data, _) = answers(
            answer(
                &cfg,
                "x",
                &query("user-service.production.global.", RecordType::A),
            )
            .unwrap(),
        );
        assert_eq!(data.len(), 1);
        assert!(data[0].starts_with("240.240."), "{data:?}");
    }

    #[test]
    fn known_name_without_that_family_is_nodata() {
        let cfg = config();
        let (code, data, _) = answers(
            answer(
                &cfg,
                "x",
                &query("reviews.default.svc.cluster.local.", RecordType::AAAA),
            )
            .unwrap(),
        );
        assert_eq!(code, ResponseCode::NoError);
        assert!(data.is_empty());
    }

    /// The resolver sent these names as they are: a fully qualified name
    /// (or one the search path ran out on) is not expanded into a service
    /// `github` of a namespace `com`, nor a bare `reviews` into one.
    #[test]
    fn names_are_not_search_expanded_by_the_proxy() {
        let yaml = format!(
            "{YAML}---\napiVersion: v1\nkind: Service\nmetadata: {{name: github, namespace: com}}\nspec:\n  clusterIP: 10.96.0.21\n  ports: [{{port: 443}}]\n"
        );
        let (report, cfg) = strait_config::check_text(std::path::Path::new("t.yaml"), &yaml);
        let cfg = cfg.unwrap_or_else(|| panic!("{report}"));
        for asked in ["github.com.", "reviews.", "reviews.default."] {
            assert_eq!(
                answer(&cfg, "x", &query(asked, RecordType::A)).unwrap(),
                Outcome::Forward,
                "{asked}"
            );
        }
        let (_, data, _) = answers(
            answer(
                &cfg,
                "x",
                &query("github.com.svc.cluster.local.", RecordType::A),
            )
            .unwrap(),
        );
        assert_eq!(data, ["10.96.0.21"]);
    }

    #[test]
    fn other_names_and_types_are_forwarded() {
        let cfg = config();
        assert_eq!(
            answer(&cfg, "x", &query("example.org.", RecordType::A)).unwrap(),
            Outcome::Forward
        );
        assert_eq!(
            answer(
                &cfg,
                "x",
                &query("reviews.default.svc.cluster.local.", RecordType::SRV)
            )
            .unwrap(),
            Outcome::Forward
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cfg = config();
        assert!(answer(&cfg, "x", b"\x00\x01garbage").is_err());
        assert!(answer(&cfg, "x", b"").is_err());
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let valid = query("reviews.default.svc.cluster.local.", RecordType::A);
        for _ in 0..5000 {
            let mut bytes = valid.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % bytes.len();
                bytes[i] = (seed >> 32) as u8;
            }
            bytes.truncate((seed as usize >> 8) % (bytes.len() + 1));
            let _ = answer(&cfg, "x", &bytes);
        }
    }
}
