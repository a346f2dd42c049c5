//! Fetching file blobs into a store: one blob on its own (by its content
//! digest, or by the registry digest of its zstd form), or a run of
//! adjacent pack members with one `Range` request. Each blob is streamed
//! (and decoded, see [`wire`](super::wire)) into a store temporary file and
//! named by its digest only once its size and sha256 match. This module
//! knows the pack and wire formats; the requests themselves, retries and
//! resumption are the [`Client`]'s.

use super::client::{Client, backoff, range_skip};
use super::pack::Member;
use super::wire::{Coding, Sink, SinkError};
use super::{RemoteError, transport};
use crate::manifest::Digest;
use crate::store::{Store, StoreError};

/// Fetches a blob of `size` content bytes into `store`: by its own
/// digest, or `via` the registry digest and size of its zstd form,
/// streamed (and decoded) into a store temporary file, resumed with
/// `Range` after a transient failure, and named by its digest only when
/// size and sha256 match. `progress` is told each piece's length.
/// Returns the bytes received (more than the wire size when a server
/// ignored a `Range` and the blob was restarted).
pub async fn fetch_blob(
    client: &Client,
    d: &Digest,
    size: u64,
    via: Option<(Digest, u64)>,
    store: &Store,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, RemoteError> {
    let (url, coding, wire) = match via {
        None => (client.blob_url(d), Coding::Plain, size),
        Some((z, n)) => (client.blob_url(&z), Coding::Zstd, n),
    };
    let mut sink = Sink::new(store, coding, size).map_err(|e| sink_err(&url, d, e))?;
    let mut received = 0u64;
    let mut attempt = 0;
    loop {
        match fetch_into(client, &url, d, wire, &mut sink, &mut received, progress).await {
            Ok(()) => break,
            Err(e) if e.transient() && attempt < client.retries() => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
    sink.finish(d).map_err(|e| sink_err(&url, d, e))?;
    Ok(received)
}

async fn fetch_into(
    client: &Client,
    url: &str,
    d: &Digest,
    wire: u64,
    sink: &mut Sink<'_>,
    received: &mut u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), RemoteError> {
    let off = sink.wire_len();
    if off == wire && wire > 0 {
        return Ok(());
    }
    let mut resp = client.get_from(url, off).await?;
    if range_skip(&resp, url, off)? > 0 {
        // the server ignored the range: start the blob again
        sink.restart().map_err(|e| sink_err(url, d, e))?;
    }
    if let Some(len) = resp.content_length() {
        if sink.wire_len() + len > wire {
            return Err(RemoteError::WrongSize { url: url.to_string(), expected: wire, got: sink.wire_len() + len });
        }
    }
    loop {
        let chunk = resp.chunk().await.map_err(|e| transport("GET", url, e, client.timeout()))?;
        let Some(chunk) = chunk else { break };
        if sink.wire_len() + chunk.len() as u64 > wire {
            return Err(RemoteError::WrongSize {
                url: url.to_string(),
                expected: wire,
                got: sink.wire_len() + chunk.len() as u64,
            });
        }
        sink.write(&chunk).map_err(|e| sink_err(url, d, e))?;
        *received += chunk.len() as u64;
        progress(chunk.len() as u64);
    }
    if sink.wire_len() < wire {
        // a body cut short without a transport error: resume
        return Err(RemoteError::Transport {
            op: "GET".into(),
            url: url.to_string(),
            detail: format!("body ended after {} of {wire} bytes", sink.wire_len()),
            transient: true,
        });
    }
    Ok(())
}

/// Fetches a run of adjacent pack members with one `Range` request,
/// each member streamed (and decoded, in a compressed pack) into its own
/// store temporary file and named once its size and sha256 match. After
/// a transient failure the request is made again from the first member
/// not yet stored. Returns the bytes received.
pub async fn fetch_run(
    client: &Client,
    pack: &Digest,
    coding: Coding,
    members: &[Member],
    store: &Store,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, RemoteError> {
    let url = client.blob_url(pack);
    let (mut done, mut received, mut attempt) = (0, 0, 0);
    while done < members.len() {
        match run_once(client, &url, coding, &members[done..], store, &mut done, &mut received, progress).await {
            Ok(()) => {}
            Err(e) if e.transient() && attempt < client.retries() => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(received)
}

#[allow(clippy::too_many_arguments)]
async fn run_once(
    client: &Client,
    url: &str,
    coding: Coding,
    members: &[Member],
    store: &Store,
    done: &mut usize,
    received: &mut u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), RemoteError> {
    let (Some(first), Some(last)) = (members.first(), members.last()) else { return Ok(()) };
    let start = first.off;
    let end = last.off + last.len;
    let range = format!("bytes={start}-{}", end.saturating_sub(1));
    let mut resp = client.get_range(url, &range).await?;
    // a server that ignores Range sends the whole pack: skip to the run
    let mut skip = range_skip(&resp, url, start)?;
    let mut i = 0;
    let mut sink: Option<Sink<'_>> = None;
    while i < members.len() {
        let chunk = resp.chunk().await.map_err(|e| transport("GET", url, e, client.timeout()))?;
        let Some(chunk) = chunk else {
            return Err(RemoteError::Transport {
                op: "GET".into(),
                url: url.to_string(),
                detail: format!("body ended inside pack member {}", members[i].digest),
                transient: true,
            });
        };
        *received += chunk.len() as u64;
        let mut data: &[u8] = &chunk;
        let k = skip.min(data.len() as u64) as usize;
        data = &data[k..];
        skip -= k as u64;
        while !data.is_empty() && i < members.len() {
            let m = members[i];
            let shown = || format!("{url} (bytes {}..{})", m.off, m.off + m.len);
            let cur = match &mut sink {
                Some(s) => s,
                None => sink.insert(Sink::new(store, coding, m.size).map_err(|e| sink_err(&shown(), &m.digest, e))?),
            };
            let k = (m.len - cur.wire_len()).min(data.len() as u64) as usize;
            cur.write(&data[..k]).map_err(|e| sink_err(&shown(), &m.digest, e))?;
            progress(k as u64);
            data = &data[k..];
            if cur.wire_len() == m.len {
                if let Some(full) = sink.take() {
                    full.finish(&m.digest).map_err(|e| sink_err(&shown(), &m.digest, e))?;
                }
                i += 1;
                *done += 1;
            }
        }
    }
    Ok(())
}

/// Stores a run of adjacent pack members from `data`, the run's bytes as
/// fetched from `url` (from the first member's offset to the last one's
/// end): each member decoded into its own store temporary file and named
/// only once its size and sha256 match (a caller that fetched the run and
/// the members' digests at once checks both here, before any is named).
/// A member that fails does not keep the others from being stored: the
/// first failure is returned once every member has been tried.
pub fn put_run(url: &str, coding: Coding, members: &[Member], data: &[u8], store: &Store) -> Result<(), RemoteError> {
    let Some(first) = members.first() else { return Ok(()) };
    let mut first_err = None;
    for m in members {
        let shown = || format!("{url} (bytes {}..{})", m.off, m.off + m.len);
        let put = || -> Result<(), RemoteError> {
            let piece = usize::try_from(m.off - first.off)
                .ok()
                .and_then(|a| Some(a..a.checked_add(usize::try_from(m.len).ok()?)?))
                .and_then(|r| data.get(r))
                .ok_or_else(|| RemoteError::WrongSize {
                    url: shown(),
                    expected: m.off + m.len - first.off,
                    got: data.len() as u64,
                })?;
            let mut sink = Sink::new(store, coding, m.size).map_err(|e| sink_err(&shown(), &m.digest, e))?;
            sink.write(piece).map_err(|e| sink_err(&shown(), &m.digest, e))?;
            sink.finish(&m.digest).map_err(|e| sink_err(&shown(), &m.digest, e))
        };
        if let Err(e) = put() {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// What a [`Sink`] refused, as the error of fetching `d` from `url`.
fn sink_err(url: &str, d: &Digest, e: SinkError) -> RemoteError {
    match e {
        SinkError::Store(StoreError::Corrupt { expected, actual, .. }) => {
            RemoteError::Corrupt { url: url.to_string(), expected, actual }
        }
        SinkError::Store(e) => e.into(),
        SinkError::TooLong { got } => RemoteError::Content {
            url: url.to_string(),
            digest: *d,
            why: format!("decodes to at least {got} bytes, more than the manifest's size"),
        },
        SinkError::TooShort { got } => RemoteError::Content {
            url: url.to_string(),
            digest: *d,
            why: format!("decodes to {got} bytes, fewer than the manifest's size"),
        },
        SinkError::Decode(why) => {
            RemoteError::Content { url: url.to_string(), digest: *d, why: format!("zstd: {why}") }
        }
    }
}
