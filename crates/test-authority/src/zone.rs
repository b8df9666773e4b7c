//! The zone builder and the zone-file loader.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use hickory_proto::{
    rr::{
        LowerName, Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, MX, NS, SOA, SRV, TXT},
    },
    serialize::txt::Parser,
};
use hickory_server::{
    net::runtime::TokioRuntimeProvider,
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, ZoneType},
};

use crate::Error;

/// SOA MINIMUM (and SOA TTL) of generated SOA records: negative answers are cacheable for 30 s
/// (RFC 2308: negative TTL = min(SOA TTL, SOA MINIMUM)).
pub const DEFAULT_NEGATIVE_TTL: u32 = 30;

/// TTL of the generated NS record.
const NS_TTL: u32 = 3600;

/// One authoritative zone, built record by record or loaded from a master file.
///
/// Builder methods never fail: an invalid name is remembered and reported by
/// [`Authority::start`](crate::Authority::start) (or [`Zone::validate`]).
#[derive(Debug)]
pub struct Zone {
    origin: Name,
    records: Vec<Record>,
    negative_ttl: u32,
    errors: Vec<Error>,
}

impl Zone {
    /// A new, empty zone; `origin` is made absolute (`example.test` = `example.test.`).
    pub fn new(origin: &str) -> Zone {
        let (origin, errors) = match Name::parse(origin, Some(&Name::root())) {
            Ok(name) => (name, Vec::new()),
            Err(source) => (
                Name::root(),
                vec![Error::Name {
                    name: origin.to_owned(),
                    source,
                }],
            ),
        };
        Zone {
            origin,
            records: Vec::new(),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            errors,
        }
    }

    /// The zone's origin (absolute).
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The records added so far (without the generated SOA and NS).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Sets the SOA MINIMUM and SOA TTL of the generated SOA, i.e. how long negative answers
    /// from this zone may be cached (default [`DEFAULT_NEGATIVE_TTL`]).
    pub fn negative_ttl(mut self, seconds: u32) -> Zone {
        self.negative_ttl = seconds;
        self
    }

    /// Adds an A record. `name` is relative to the origin unless it ends with `.`; `@` is the
    /// origin; `*.dyn` is a wildcard.
    pub fn a(self, name: &str, addr: Ipv4Addr, ttl: u32) -> Zone {
        self.add(name, ttl, RData::A(A(addr)))
    }

    /// Adds an AAAA record.
    pub fn aaaa(self, name: &str, addr: Ipv6Addr, ttl: u32) -> Zone {
        self.add(name, ttl, RData::AAAA(AAAA(addr)))
    }

    /// Adds a CNAME record; `target` is relative to the origin unless it ends with `.` (so a
    /// target in another zone is written absolute: `www.other.test.`).
    pub fn cname(mut self, name: &str, target: &str, ttl: u32) -> Zone {
        match self.name(target) {
            Some(target) => self.add(name, ttl, RData::CNAME(CNAME(target))),
            None => self,
        }
    }

    /// Adds a TXT record with one character-string.
    pub fn txt(self, name: &str, text: &str, ttl: u32) -> Zone {
        self.add(name, ttl, RData::TXT(TXT::new(vec![text.to_owned()])))
    }

    /// Adds an MX record.
    pub fn mx(mut self, name: &str, preference: u16, exchange: &str, ttl: u32) -> Zone {
        match self.name(exchange) {
            Some(exchange) => self.add(name, ttl, RData::MX(MX::new(preference, exchange))),
            None => self,
        }
    }

    /// Adds an SRV record (`name` like `_http._tcp`).
    pub fn srv(
        mut self,
        name: &str,
        priority: u16,
        weight: u16,
        port: u16,
        target: &str,
        ttl: u32,
    ) -> Zone {
        match self.name(target) {
            Some(target) => self.add(
                name,
                ttl,
                RData::SRV(SRV::new(priority, weight, port, target)),
            ),
            None => self,
        }
    }

    /// Adds any record as is (its owner name must be absolute and inside the zone).
    pub fn record(mut self, record: Record) -> Zone {
        self.push(record);
        self
    }

    /// Loads a zone from an RFC 1035 master file. The origin is the owner of the file's SOA
    /// record if it has one, else its `$ORIGIN`; a missing SOA or NS is generated.
    pub fn from_master_file(path: impl AsRef<Path>) -> Result<Zone, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Zone::parse_master(&text, Some(path.to_owned()), None)
    }

    /// Parses RFC 1035 master-file text. `origin` is the initial `$ORIGIN` (the text may set
    /// its own); `path` only serves error messages and relative `$INCLUDE`s.
    pub fn parse_master(
        text: &str,
        path: Option<PathBuf>,
        origin: Option<&str>,
    ) -> Result<Zone, Error> {
        let display_path = path.clone().unwrap_or_else(|| PathBuf::from("<text>"));
        let origin = match origin {
            Some(o) => Some(
                Name::parse(o, Some(&Name::root())).map_err(|source| Error::Name {
                    name: o.to_owned(),
                    source,
                })?,
            ),
            None => None,
        };
        let (file_origin, rrsets) =
            Parser::new(text, path, origin)
                .parse()
                .map_err(|source| Error::Parse {
                    path: display_path,
                    source,
                })?;
        let records: Vec<Record> = rrsets
            .values()
            .flat_map(|rrset| rrset.records_without_rrsigs().cloned())
            .collect();
        let origin = records
            .iter()
            .find(|r| r.record_type() == RecordType::SOA)
            .map(|r| r.name.clone())
            .unwrap_or(file_origin);
        let mut zone = Zone {
            origin,
            records: Vec::new(),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            errors: Vec::new(),
        };
        for record in records {
            zone.push(record);
        }
        zone.validate()?;
        Ok(zone)
    }

    /// Reports the first error the builder remembered, if any.
    pub fn validate(&mut self) -> Result<(), Error> {
        match self.errors.is_empty() {
            true => Ok(()),
            false => Err(self.errors.remove(0)),
        }
    }

    /// Builds the hickory zone handler: the records plus a generated SOA/NS when missing.
    pub(crate) fn into_handler(
        mut self,
    ) -> Result<(LowerName, InMemoryZoneHandler<TokioRuntimeProvider>), Error> {
        self.validate()?;
        let origin = self.origin.clone();
        let has = |t: RecordType, records: &[Record]| {
            records
                .iter()
                .any(|r| r.record_type() == t && r.name == origin)
        };
        let mut generated = Vec::new();
        let ns_name = Name::parse("ns1", Some(&origin)).map_err(|source| Error::Name {
            name: format!("ns1.{origin}"),
            source,
        })?;
        if !has(RecordType::SOA, &self.records) {
            let rname = Name::parse("hostmaster", Some(&origin)).map_err(|source| Error::Name {
                name: format!("hostmaster.{origin}"),
                source,
            })?;
            let soa = SOA::new(
                ns_name.clone(),
                rname,
                1,
                3600,
                600,
                86400,
                self.negative_ttl,
            );
            generated.push(Record::from_rdata(
                origin.clone(),
                self.negative_ttl,
                RData::SOA(soa),
            ));
        }
        if !has(RecordType::NS, &self.records) {
            generated.push(Record::from_rdata(
                origin.clone(),
                NS_TTL,
                RData::NS(NS(ns_name)),
            ));
        }
        let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        // The SOA goes in first: the handler reads the serial from it.
        generated.sort_by_key(|r| r.record_type() != RecordType::SOA);
        for record in generated.into_iter().chain(self.records) {
            let desc = format!("{} {}", record.name, record.record_type());
            if !handler.upsert_mut(record, 1) {
                return Err(Error::Zone {
                    origin: origin.to_string(),
                    reason: format!(
                        "{desc} was rejected (a CNAME cannot share its name with other data)"
                    ),
                });
            }
        }
        Ok((LowerName::new(&origin), handler))
    }

    fn name(&mut self, name: &str) -> Option<Name> {
        if name == "@" {
            return Some(self.origin.clone());
        }
        match Name::parse(name, Some(&self.origin)) {
            Ok(n) => Some(n),
            Err(source) => {
                self.errors.push(Error::Name {
                    name: name.to_owned(),
                    source,
                });
                None
            }
        }
    }

    fn add(mut self, name: &str, ttl: u32, rdata: RData) -> Zone {
        if let Some(name) = self.name(name) {
            self.push(Record::from_rdata(name, ttl, rdata));
        }
        self
    }

    fn push(&mut self, record: Record) {
        if !self.origin.zone_of(&record.name) {
            self.errors.push(Error::OutOfZone {
                origin: self.origin.to_string(),
                name: record.name.to_string(),
            });
            return;
        }
        self.records.push(record);
    }
}
