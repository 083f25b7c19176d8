//! ListObjectsV2 answers read in one pass over their XML, in place of the SDK's reader.
//!
//! The SDK reads each listing page twice: once to find out whether a `200 OK` carries an
//! `<Error>` (S3 may answer so), walking the whole document to the end of its root
//! element to learn only the root's name, and once more through a generic decoder that
//! costs about as much again. On a 20,000-key listing that was most of the client's
//! CPU, and since each page's continuation token is only known once the page is read,
//! it is time every listing waits for. [`PageReader`] installs [`ListPage`] as the
//! deserializer of every ListObjectsV2 request the source's client sends: one pass of
//! `xmlparser` tokens, the page's fields filled as the SDK fills them.
//!
//! What it gives back is the SDK's own output and error types, so the rest of the SDK
//! (retries, their classification by error code and status, the source's `classify`)
//! sees what it saw before: a `<ListBucketResult>` becomes a `ListObjectsV2Output`; an
//! `<Error>` root, whatever the status, or any other status than 2xx, becomes the same
//! `ListObjectsV2Error` the SDK builds (code, message, `NoSuchBucket` as its own
//! variant, an empty 404 as `NotFound`); a body that is not well-formed is an error too.
//! Fields of the page the source never reads (owners, checksums, restore status, the
//! request-charged header, request ids) are skipped.

use std::borrow::Cow;

use aws_sdk_s3::operation::list_objects_v2::{ListObjectsV2Error, ListObjectsV2Input, ListObjectsV2Output};
use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
use aws_sdk_s3::types::error::NoSuchBucket;
use aws_sdk_s3::types::{EncodingType, Object, ObjectStorageClass};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, Error as ErasedError, Output,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, OrchestratorError};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::client::ser_de::{DeserializeResponse, SharedResponseDeserializer};
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::ErrorMetadata;
use xmlparser::{ElementEnd, Token, Tokenizer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most entries a ListObjectsV2 page holds (its `max-keys` cannot ask for more).
const MAX_KEYS: usize = 1000;

/// Installs [`ListPage`] for each ListObjectsV2 request, and leaves others alone.
#[derive(Debug, Clone, Copy)]
pub struct PageReader;

impl Intercept for PageReader {
    fn name(&self) -> &'static str {
        "PageReader"
    }

    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The interceptor state is the bag's top layer: what is put there is what the
        // orchestrator loads when the answer comes, over the operation's own reader.
        if context.input().downcast_ref::<ListObjectsV2Input>().is_some() {
            cfg.interceptor_state().store_put(SharedResponseDeserializer::new(ListPage));
        }
        Ok(())
    }
}

/// The deserializer of ListObjectsV2 answers (see the module's documentation).
#[derive(Debug)]
pub struct ListPage;

impl DeserializeResponse for ListPage {
    fn deserialize_nonstreaming_with_config(
        &self,
        response: &HttpResponse,
        _cfg: &ConfigBag,
    ) -> Result<Output, OrchestratorError<ErasedError>> {
        let body = response.body().bytes().unwrap_or_default();
        read(response.status().is_success(), response.status().as_u16(), body)
            .map(Output::erase)
            .map_err(|error| OrchestratorError::operation(ErasedError::erase(error)))
    }
}

/// The answer of status `status` (`success`: 2xx) with `body`: the page, or the error.
fn read(success: bool, status: u16, body: &[u8]) -> Result<ListObjectsV2Output, ListObjectsV2Error> {
    if success {
        match page(body) {
            Ok(Some(page)) => return Ok(page),
            Ok(None) => {} // an `<Error>` in a 200: read as an error, as the SDK does
            Err(error) => return Err(ListObjectsV2Error::unhandled(error)),
        }
    }
    Err(error(status, body))
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable ListObjectsV2 answer: {0}")]
pub struct Malformed(String);

impl From<xmlparser::Error> for Malformed {
    fn from(error: xmlparser::Error) -> Self {
        Malformed(error.to_string())
    }
}

/// The error an answer carries, as the SDK builds it: the `<Code>` and `<Message>` of
/// the root, `NoSuchBucket` as its own variant, an empty body on a 404 as `NotFound`.
fn error(status: u16, body: &[u8]) -> ListObjectsV2Error {
    let mut meta = ErrorMetadata::builder();
    if body.is_empty() {
        if status == 404 {
            meta = meta.code("NotFound");
        }
    } else {
        match error_fields(body) {
            Ok((code, message)) => {
                if let Some(code) = code {
                    meta = meta.code(code);
                }
                if let Some(message) = message {
                    meta = meta.message(message);
                }
            }
            Err(error) => return ListObjectsV2Error::unhandled(error),
        }
    }
    let meta = meta.build();
    match meta.code() {
        None => ListObjectsV2Error::unhandled(meta),
        Some("NoSuchBucket") => {
            let mut bucket = NoSuchBucket::builder().meta(meta.clone());
            if let Some(message) = meta.message() {
                bucket = bucket.message(message);
            }
            ListObjectsV2Error::NoSuchBucket(bucket.build())
        }
        Some(_) => ListObjectsV2Error::generic(meta),
    }
}

/// The `<Code>` and `<Message>` children of the root element.
fn error_fields(body: &[u8]) -> Result<(Option<String>, Option<String>), Malformed> {
    let mut xml = Xml::new(body)?;
    xml.root()?;
    let (mut code, mut message) = (None, None);
    while let Some(name) = xml.child()? {
        match name {
            "Code" => code = Some(xml.text()?.into_owned()),
            "Message" => message = Some(xml.text()?.into_owned()),
            _ => xml.skip()?,
        }
    }
    Ok((code, message))
}

/// A `<ListBucketResult>` read into the SDK's output; None when the root is anything
/// else (an `<Error>`).
fn page(body: &[u8]) -> Result<Option<ListObjectsV2Output>, Malformed> {
    let mut xml = Xml::new(body)?;
    if xml.root()? != "ListBucketResult" {
        return Ok(None);
    }
    let mut page = ListObjectsV2Output::builder();
    let mut contents = Vec::new();
    while let Some(name) = xml.child()? {
        page = match name {
            "Contents" => {
                contents.push(object(&mut xml)?);
                page
            }
            "IsTruncated" => page.is_truncated(boolean(&xml.text()?)?),
            "NextContinuationToken" => page.next_continuation_token(xml.text()?),
            "ContinuationToken" => page.continuation_token(xml.text()?),
            "EncodingType" => page.encoding_type(EncodingType::from(&*xml.text()?)),
            "KeyCount" => {
                let count: i32 = number(&xml.text()?)?;
                // Room for the entries that follow (S3 puts the count first), at most a
                // page's worth whatever the server says.
                contents.reserve(usize::try_from(count).unwrap_or(0).min(MAX_KEYS));
                page.key_count(count)
            }
            "MaxKeys" => page.max_keys(number(&xml.text()?)?),
            "Name" => page.name(xml.text()?),
            "Prefix" => page.prefix(xml.text()?),
            "StartAfter" => page.start_after(xml.text()?),
            "Delimiter" => page.delimiter(xml.text()?),
            _ => {
                xml.skip()?;
                page
            }
        };
    }
    Ok(Some(page.set_contents(Some(contents)).build()))
}

/// One `<Contents>` entry.
fn object(xml: &mut Xml<'_>) -> Result<Object, Malformed> {
    let mut object = Object::builder();
    while let Some(name) = xml.child()? {
        object = match name {
            "Key" => object.key(xml.text()?),
            "LastModified" => {
                let text = xml.text()?;
                let time = DateTime::from_str(&text, DateTimeFormat::DateTimeWithOffset)
                    .map_err(|e| Malformed(format!("LastModified {text:?}: {e}")))?;
                object.last_modified(time)
            }
            "ETag" => object.e_tag(xml.text()?),
            "Size" => object.size(number(&xml.text()?)?),
            "StorageClass" => object.storage_class(ObjectStorageClass::from(&*xml.text()?)),
            _ => {
                xml.skip()?;
                object
            }
        };
    }
    Ok(object.build())
}

fn boolean(text: &str) -> Result<bool, Malformed> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(Malformed(format!("not a boolean: {other:?}"))),
    }
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, Malformed> {
    text.trim().parse().map_err(|_| Malformed(format!("not a number: {text:?}")))
}

/// A pull reader over the elements of a document: their local names, their text, and
/// their ends, checked against their starts.
struct Xml<'a> {
    tokens: Tokenizer<'a>,
    /// Local names of the elements open, innermost last.
    open: Vec<&'a str>,
    /// The element just started was empty (`<a/>`): it has no text and no children,
    /// and is closed already.
    empty: bool,
}

impl<'a> Xml<'a> {
    fn new(body: &'a [u8]) -> Result<Self, Malformed> {
        let text = std::str::from_utf8(body).map_err(|e| Malformed(format!("not UTF-8: {e}")))?;
        Ok(Xml { tokens: Tokenizer::from(text), open: Vec::new(), empty: false })
    }

    /// The next token that matters: declarations, comments and processing
    /// instructions are passed over; a document type is refused (S3 sends none, and
    /// entities it declared would change what the text means).
    fn next(&mut self) -> Result<Token<'a>, Malformed> {
        loop {
            let token = self.tokens.next().ok_or_else(|| Malformed("the document ends early".into()))??;
            match token {
                Token::Declaration { .. } | Token::Comment { .. } | Token::ProcessingInstruction { .. } => {}
                Token::DtdStart { .. }
                | Token::EmptyDtd { .. }
                | Token::EntityDeclaration { .. }
                | Token::DtdEnd { .. } => {
                    return Err(Malformed("a document type declaration".into()));
                }
                token => return Ok(token),
            }
        }
    }

    /// Reads the rest of the start tag of `local` (attributes are passed over) and
    /// opens the element, unless it was empty.
    fn start(&mut self, local: &'a str) -> Result<(), Malformed> {
        loop {
            match self.next()? {
                Token::Attribute { .. } => {}
                Token::ElementEnd { end: ElementEnd::Open, .. } => {
                    self.open.push(local);
                    self.empty = false;
                    return Ok(());
                }
                Token::ElementEnd { end: ElementEnd::Empty, .. } => {
                    self.empty = true;
                    return Ok(());
                }
                other => {
                    return Err(Malformed(format!("unexpected {other:?} in the start tag of <{local}>")));
                }
            }
        }
    }

    /// Closes the innermost element, which the end tag names `local`.
    fn close(&mut self, local: &str) -> Result<(), Malformed> {
        match self.open.pop() {
            Some(open) if open == local => Ok(()),
            open => Err(Malformed(format!("</{local}> closes {open:?}"))),
        }
    }

    /// Starts the root element and gives its local name; its children follow.
    fn root(&mut self) -> Result<&'a str, Malformed> {
        loop {
            match self.next()? {
                Token::ElementStart { local, .. } => {
                    let local = local.as_str();
                    self.start(local)?;
                    return Ok(local);
                }
                Token::Text { text } if text.trim().is_empty() => {}
                other => return Err(Malformed(format!("unexpected {other:?} before the root element"))),
            }
        }
    }

    /// Starts the next child of the element last started and gives its local name;
    /// None when that element ends. Text between children is passed over.
    fn child(&mut self) -> Result<Option<&'a str>, Malformed> {
        if std::mem::take(&mut self.empty) {
            return Ok(None);
        }
        loop {
            match self.next()? {
                Token::ElementStart { local, .. } => {
                    let local = local.as_str();
                    self.start(local)?;
                    return Ok(Some(local));
                }
                Token::ElementEnd { end: ElementEnd::Close(_, local), .. } => {
                    self.close(local.as_str())?;
                    return Ok(None);
                }
                Token::Text { .. } | Token::Cdata { .. } => {}
                other => return Err(Malformed(format!("unexpected {other:?}"))),
            }
        }
    }

    /// The text of the element just started, entities resolved, up to its end; an
    /// element inside it is an error.
    fn text(&mut self) -> Result<Cow<'a, str>, Malformed> {
        let mut text = Cow::Borrowed("");
        if std::mem::take(&mut self.empty) {
            return Ok(text);
        }
        loop {
            let piece = match self.next()? {
                Token::Text { text } => unescape(text.as_str())?,
                Token::Cdata { text, .. } => Cow::Borrowed(text.as_str()),
                Token::ElementEnd { end: ElementEnd::Close(_, local), .. } => {
                    self.close(local.as_str())?;
                    return Ok(text);
                }
                Token::ElementStart { local, .. } => {
                    return Err(Malformed(format!("<{}> inside a text field", local.as_str())));
                }
                other => return Err(Malformed(format!("unexpected {other:?} in a text field"))),
            };
            if text.is_empty() {
                text = piece;
            } else {
                text.to_mut().push_str(&piece);
            }
        }
    }

    /// Passes over the element just started, whatever it holds.
    fn skip(&mut self) -> Result<(), Malformed> {
        if std::mem::take(&mut self.empty) {
            return Ok(());
        }
        let depth = self.open.len();
        while self.open.len() >= depth {
            match self.next()? {
                Token::ElementStart { local, .. } => {
                    self.start(local.as_str())?;
                    self.empty = false;
                }
                Token::ElementEnd { end: ElementEnd::Close(_, local), .. } => self.close(local.as_str())?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// `text` with its character and entity references resolved (the five XML predefines
/// and numeric ones; a document type could declare no others here).
fn unescape(text: &str) -> Result<Cow<'_, str>, Malformed> {
    if !text.contains('&') {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after.find(';').ok_or_else(|| Malformed(format!("an unfinished reference in {text:?}")))?;
        let name = &after[..end];
        let c = match name {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => match name.strip_prefix('#') {
                Some(hex) if hex.starts_with('x') => {
                    u32::from_str_radix(&hex[1..], 16).ok().and_then(char::from_u32)
                }
                Some(decimal) => decimal.parse().ok().and_then(char::from_u32),
                None => None,
            },
        };
        out.push(c.ok_or_else(|| Malformed(format!("an unknown reference &{name}; in {text:?}")))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::ProvideErrorMetadata;

    use super::*;

    /// A page as AWS documents it, with what a listing may carry besides: an XML
    /// declaration, a namespace, attributes, comments, owners and nested elements, an
    /// empty element, references, CDATA, and a key of a server that ignored
    /// `encoding-type`.
    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name>
  <Prefix>in/</Prefix>
  <KeyCount>3</KeyCount>
  <MaxKeys>1000</MaxKeys>
  <EncodingType>url</EncodingType>
  <IsTruncated>true</IsTruncated>
  <!-- the token of the next page -->
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
  <Contents>
    <Key>in/a%20b.csv</Key>
    <LastModified>2026-11-27T06:00:00.123Z</LastModified>
    <ETag>&quot;599bab3ed2c697f1d26842727561fd94&quot;</ETag>
    <ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm>
    <Size>142863</Size>
    <Owner><ID>owner</ID><DisplayName>me</DisplayName></Owner>
    <StorageClass>STANDARD</StorageClass>
    <RestoreStatus><IsRestoreInProgress>false</IsRestoreInProgress></RestoreStatus>
  </Contents>
  <Contents><Key><![CDATA[in/<raw> & ]]>more&#x2603;&#65;</Key><LastModified>2026-11-27T06:00:01Z</LastModified><ETag>"e-2"</ETag><Size>0</Size><StorageClass>GLACIER_IR</StorageClass><Extra/></Contents>
  <Contents><Key>in/c</Key><LastModified>2026-11-27T06:00:02+00:00</LastModified><ETag/><Size>7</Size></Contents>
</ListBucketResult>"#;

    #[test]
    fn a_page_is_read_as_the_sdk_reads_it() {
        let page = read(true, 200, PAGE.as_bytes()).unwrap();
        assert_eq!(page.name(), Some("bucket"));
        assert_eq!(page.prefix(), Some("in/"));
        assert_eq!(
            (page.key_count(), page.max_keys(), page.is_truncated()),
            (Some(3), Some(1000), Some(true))
        );
        assert_eq!(page.encoding_type(), Some(&EncodingType::Url));
        assert_eq!(page.next_continuation_token(), Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="));
        let objects = page.contents();
        assert_eq!(objects.len(), 3);
        let a = &objects[0];
        assert_eq!(a.key(), Some("in/a%20b.csv"));
        assert_eq!(a.last_modified().map(|t| t.to_millis().unwrap()), Some(1_795_759_200_123));
        assert_eq!(a.e_tag(), Some("\"599bab3ed2c697f1d26842727561fd94\""));
        assert_eq!((a.size(), a.storage_class()), (Some(142_863), Some(&ObjectStorageClass::Standard)));
        let b = &objects[1];
        assert_eq!(b.key(), Some("in/<raw> & more\u{2603}A"));
        assert_eq!((b.e_tag(), b.size()), (Some("\"e-2\""), Some(0)));
        assert_eq!(b.storage_class(), Some(&ObjectStorageClass::GlacierIr));
        let c = &objects[2];
        assert_eq!(c.last_modified().map(|t| t.to_millis().unwrap()), Some(1_795_759_202_000));
        assert_eq!((c.e_tag(), c.storage_class()), (Some(""), None));
    }

    #[test]
    fn an_empty_page_is_a_page() {
        for body in
            ["<ListBucketResult/>", "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"]
        {
            let page = read(true, 200, body.as_bytes()).unwrap();
            assert!(page.contents().is_empty() && page.is_truncated() != Some(true), "{body}");
        }
    }

    const NO_SUCH_BUCKET: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchBucket</Code>\
        <Message>The specified bucket does not exist</Message><BucketName>b</BucketName>\
        <RequestId>1</RequestId></Error>";

    #[test]
    fn errors_carry_the_code_and_message_the_sdk_gives_them() {
        let error = read(false, 404, NO_SUCH_BUCKET.as_bytes()).unwrap_err();
        assert!(matches!(error, ListObjectsV2Error::NoSuchBucket(_)));
        assert_eq!(
            (error.code(), error.message()),
            (Some("NoSuchBucket"), Some("The specified bucket does not exist"))
        );
        // S3 may answer 200 with an error: it is an error all the same.
        let slow = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        let error = read(true, 200, slow.as_bytes()).unwrap_err();
        assert_eq!(
            (error.code(), error.message()),
            (Some("SlowDown"), Some("Please reduce your request rate."))
        );
        let error = read(false, 404, b"").unwrap_err();
        assert_eq!(error.code(), Some("NotFound"));
        let error = read(false, 403, b"").unwrap_err();
        assert_eq!(error.code(), None);
        // A proxy's page instead of S3's answer: no code, the status decides.
        let error = read(false, 502, b"<html><body>Bad Gateway</body></html>").unwrap_err();
        assert_eq!(error.code(), None);
        let error = read(false, 503, b"Service Unavailable").unwrap_err();
        assert_eq!(error.code(), None);
    }

    #[test]
    fn a_body_that_is_not_well_formed_is_an_error_not_a_short_page() {
        for body in [
            "",
            "<ListBucketResult><Contents><Key>a</Key>",
            "<ListBucketResult><Contents><Key>a</Size></Contents></ListBucketResult>",
            "<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>",
            "<ListBucketResult><KeyCount>many</KeyCount></ListBucketResult>",
            "<ListBucketResult><Contents><Key>a<b/></Key></Contents></ListBucketResult>",
            "<ListBucketResult><Contents><Key>&bogus;</Key></Contents></ListBucketResult>",
            "<ListBucketResult><Contents><LastModified>yesterday</LastModified></Contents></ListBucketResult>",
            "<!DOCTYPE x [<!ENTITY e \"boom\">]><ListBucketResult/>",
        ] {
            let error = read(true, 200, body.as_bytes()).unwrap_err();
            assert!(error.code().is_none(), "{body}: {error:?}");
        }
        assert!(read(true, 200, b"\xff\xfe").is_err());
    }

    #[test]
    fn references_are_resolved() {
        assert_eq!(unescape("a &lt;b&gt; &amp; &quot;c&apos; &#65;&#x42;").unwrap(), "a <b> & \"c' AB");
        assert_eq!(unescape("plain").unwrap(), "plain");
        for bad in ["&", "&amp", "&#xZZ;", "&#1114112;", "&nbsp;"] {
            assert!(unescape(bad).is_err(), "{bad}");
        }
    }
}
