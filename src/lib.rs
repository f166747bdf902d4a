//! # switchyard-server — the `switchyard` service
//!
//! A thin layer over the `switchyard` actor library: [`config`] loads and validates
//! `config.yaml`, [`service`] wires the router, observer, [`proxy`] listener and [`admin`] API
//! together and runs the shutdown sequence, and [`demo`] shows the whole thing live with
//! in-process backends; [`ctl`] is the operator's client for a running instance's admin API.
//! Every connection kind ([`proxy`]'s `tcp`, [`mysql`], the demo's clients) starts through
//! [`entry`], which sits below both protocol modules so neither imports the other; [`tls`] and
//! [`proxy_protocol`] are what [`entry`]'s door and the backend side use for TLS and PROXY headers. Behaviour that an embedding application also needs lives in the library, not here.

pub mod admin;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod entry;
pub mod metrics;
pub mod mysql;
pub mod proxy;
pub mod proxy_protocol;
pub mod service;
pub mod shutdown;
pub mod tls;
