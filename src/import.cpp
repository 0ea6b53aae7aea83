// KeyManager::import_keys(): rows of the reference Python service's `api_keys` table,
// as JSON lines or PostgreSQL CSV, into a Store. One row at a time, never the whole
// input; every buffer of ours that held a row is wiped (it holds the row's digest);
// the JSON parser's own token copies are not (doc/import.md, invariant 8).

#include <openssl/crypto.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "apikeys/clock.hpp"
#include "apikeys/error.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/key_manager.hpp"
#include "cache_registry.hpp"
#include "guarded.hpp"
#include "hex.hpp"
#include "import_reader.hpp"
#include "key_import.hpp"
#include "secret_text.hpp"
#include "text.hpp"
#include "timestamp.hpp"

namespace apikeys::detail {

namespace {

using json = nlohmann::json;

// A longer row is rejected; reading goes on at the next one.
constexpr std::size_t kMaxRowBytes = std::size_t{1} << 20;
// The title of a key whose row has none (NULL, empty or blank): create() requires one.
constexpr char kDefaultTitle[] = "Imported key";

// The columns kept, the required ones first.
enum Column : std::size_t {
  kKeyId,
  kPublicKey,
  kSecretKeyHash,
  kAccountId,
  kStatus,
  kCreatedAt,
  kTitle,
  kDescription,
  kExpiresAt,
  kLastUsedAt,
  kColumns
};
constexpr std::size_t kRequiredColumns = kCreatedAt + 1;
constexpr std::array<std::string_view, kColumns> kColumnNames = {
    "key_id",     "public_key", "secret_key_hash", "account_id", "status",
    "created_at", "title",      "description",     "expires_at", "last_used_at"};

std::optional<std::size_t> column_of(std::string_view name) {
  for (std::size_t i = 0; i < kColumns; ++i) {
    if (kColumnNames[i] == name) return i;
  }
  return std::nullopt;
}

// One field of a row: absent (no such member or column), NULL, or text.
struct Value {
  bool present = false;
  bool null = false;
  std::string text;
};

// The fields of one row. Wipes them before reuse and when it dies.
struct Row {
  std::array<Value, kColumns> values;
  Row() = default;
  Row(const Row&) = delete;
  Row& operator=(const Row&) = delete;
  ~Row() { clear(); }
  void clear() noexcept {
    for (Value& v : values) {
      OPENSSL_cleanse(v.text.data(), v.text.size());
      v.text.clear();
      v.present = false;
      v.null = false;
    }
  }
};

// A SAX handler that reads one JSON object's members into a Row: the known ones must
// be strings or null, the others (of any shape) are ignored. Stops at the first rule
// broken. Copies each string out of the parser's scratch buffer, then wipes it there.
class RowReader final : public nlohmann::json_sax<json> {
 public:
  explicit RowReader(Row& row) : row_(row) {}

  // The first rule broken, or empty.
  [[nodiscard]] const std::string& error() const noexcept { return error_; }

  bool null() override {
    if (!scalar()) return false;
    if (Value* v = member()) {
      v->present = true;
      v->null = true;
    }
    return true;
  }
  bool boolean(bool /*val*/) override { return not_text(); }
  bool number_integer(number_integer_t /*val*/) override { return not_text(); }
  bool number_unsigned(number_unsigned_t /*val*/) override { return not_text(); }
  bool number_float(number_float_t /*val*/, const string_t& /*s*/) override { return not_text(); }
  bool binary(binary_t& /*val*/) override { return fail("the line is not valid JSON"); }
  bool string(string_t& val) override {
    const bool ok = scalar();
    if (ok) {
      if (Value* v = member()) {
        v->present = true;
        v->text.assign(val);
      }
    }
    OPENSSL_cleanse(val.data(), val.size());
    return ok;
  }
  bool start_object(std::size_t /*elements*/) override {
    if (depth_ == 0) {
      depth_ = 1;
      return true;
    }
    if (!nested()) return false;
    ++depth_;
    return true;
  }
  bool end_object() override {
    --depth_;
    return true;
  }
  bool start_array(std::size_t /*elements*/) override {
    if (depth_ == 0) return fail("the line is not a JSON object");
    if (!nested()) return false;
    ++depth_;
    return true;
  }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool key(string_t& name) override {
    if (depth_ != 1) return true;
    const auto column = column_of(name);
    current_ = column ? static_cast<int>(*column) : -1;
    if (column && row_.values[*column].present) {
      return fail(std::string(kColumnNames[*column]) + " appears twice");
    }
    return true;
  }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& /*ex*/) override {
    // The exception's text may quote the input (a digest): never keep it.
    return fail("the line is not valid JSON");
  }

 private:
  // A scalar value: refused at the top level.
  bool scalar() {
    if (depth_ == 0) return fail("the line is not a JSON object");
    return true;
  }
  // The known member whose value this is, or null (an unknown member, or nested).
  Value* member() {
    if (depth_ != 1 || current_ < 0) return nullptr;
    return &row_.values[static_cast<std::size_t>(current_)];
  }
  bool not_text() {
    if (!scalar()) return false;
    if (member() != nullptr) return must_be_text();
    return true;
  }
  // An object or array as a value.
  bool nested() {
    if (member() != nullptr) return must_be_text();
    return true;
  }
  bool must_be_text() {
    return fail(std::string(kColumnNames[static_cast<std::size_t>(current_)]) +
                " must be a string or null");
  }
  bool fail(std::string rule) {
    if (error_.empty()) error_ = std::move(rule);
    return false;
  }

  Row& row_;
  int depth_ = 0;     // 0: before the object; 1: its members; more: inside a member
  int current_ = -1;  // the known member whose value comes next, or -1
  std::string error_;
};

// Whether the JSON text `line` holds a secret key: in its bytes, or once its string
// escapes are decoded (a secret written "sk\u005f..." is one too). The decoded copy is
// wiped; it is never longer than the line, so it never reallocates.
bool json_holds_secret_key(std::string_view line) {
  if (detail::holds_secret_key(line)) return true;
  if (line.find('\\') == std::string_view::npos) return false;
  std::string decoded;
  decoded.reserve(line.size());
  detail::decode_json_escapes(line, decoded);
  const bool found = detail::holds_secret_key(decoded);
  OPENSSL_cleanse(decoded.data(), decoded.size());
  return found;
}

// Fills `row` from one JSON line; the reason it cannot, or empty.
std::string parse_json_row(std::string_view line, Row& row) {
  // A raw NUL is never JSON, and the parser would take it for the end of the text.
  if (line.find('\0') != std::string_view::npos) return "the line is not valid JSON";
  // A secret key anywhere in the line (pasted into a title or description, say, and
  // written with escapes or not) rejects the row before the parser runs: its lexer
  // copies each string into buffers of its own, which it frees unwiped as they grow.
  // The line itself is wiped by the reader.
  if (json_holds_secret_key(line)) return "the row holds a secret key (sk_...): remove it";
  RowReader reader(row);
  bool ok = false;
  try {
    ok = json::sax_parse(line.begin(), line.end(), &reader, nlohmann::detail::input_format_t::json,
                         /*strict=*/true);
  } catch (const nlohmann::json::exception&) {
    ok = false;  // not expected with a handler; its text may quote the input
  }
  if (!reader.error().empty()) return reader.error();
  if (!ok) return "the line is not valid JSON";
  return {};
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

bool is_legacy(const KeyFormat& f) {
  return f.public_prefix == "pk_" && f.secret_prefix == "sk_" && f.length == 32 && !f.checksum;
}

// Whether `f` accepts some legacy public keys ("pk_" and 32 base62 characters): without
// a checksum, of their size, with a public prefix of "pk_" and base62 characters. (A
// checksummed format of that shape accepts one legacy key in 62^6: not counted.)
bool reads_legacy_public_keys(const KeyFormat& f) {
  constexpr std::size_t kLegacyPublicSize = 3 + 32;
  if (f.checksum || f.public_key_size() != kLegacyPublicSize) return false;
  if (f.public_prefix.compare(0, 3, "pk_") != 0) return false;
  return std::all_of(f.public_prefix.begin() + 3, f.public_prefix.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
  });
}

std::string missing(Column c) { return std::string(kColumnNames[c]) + " is missing or null"; }

std::string bad_timestamp(Column c) {
  return std::string(kColumnNames[c]) +
         " is not a timestamp with a UTC offset (YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]) within "
         "the range a TimePoint holds (1677-09-22 to 2262-04-11 where it counts nanoseconds)";
}

// Wipes a digest's bytes when the scope ends.
class DigestWipe {
 public:
  explicit DigestWipe(Digest& d) noexcept : d_(d) {}
  ~DigestWipe() { OPENSSL_cleanse(d_.bytes.data(), d_.bytes.size()); }
  DigestWipe(const DigestWipe&) = delete;
  DigestWipe& operator=(const DigestWipe&) = delete;

 private:
  Digest& d_;
};

class Importer {
 public:
  Importer(Store& store, const ImportOptions& options, TimePoint now, const ChangeAudit& audit,
           const std::function<void(const KeyInfo&)>& imported)
      : store_(store), options_(options), now_(now), audit_(audit), imported_(imported) {}

  void reject(std::uint64_t line, std::string reason) {
    ++report_.rejected;
    if (report_.rejections.size() < options_.max_rejections_listed) {
      report_.rejections.push_back(ImportRejection{line, std::move(reason)});
    }
  }

  // Imports, skips or rejects one row.
  void row(std::uint64_t line, const Row& row) {
    KeyRecord record;
    DigestWipe wipe(record.digest);
    std::string reason = build(row, record);
    if (!reason.empty()) return reject(line, std::move(reason));

    std::optional<KeyRecord> existing =
        guarded("reading the store", [&] { return store_.find(record.info.public_key); });
    if (existing) {
      DigestWipe wipe_existing(existing->digest);
      if (existing->info.key_id != record.info.key_id ||
          existing->info.account_id != record.info.account_id) {
        return reject(line, "public key belongs to another key");
      }
      ++report_.skipped;
      // An earlier run may have stored it and then failed before erasing it
      // (doc/import.md, invariant 4).
      erase_everywhere(store_.identity(), record.info.public_key);
      return;
    }
    try {
      guarded("storing the key", [&] { store_.insert_audited(record, audit_); });
    } catch (const Error& e) {
      if (e.code() != ErrorCode::already_exists) throw;
      return reject(line, "key_id (or public key) is taken by another key");
    }
    ++report_.imported;
    // A not_found cached before the import must not hide the key. The key is imported
    // whether or not that erase fails: it is reported either way.
    try {
      erase_everywhere(store_.identity(), record.info.public_key);
    } catch (...) {
      if (imported_) imported_(record.info);
      throw;
    }
    if (imported_) imported_(record.info);
  }

  ImportReport take_report() { return std::move(report_); }

 private:
  // Checks the row and fills `record`; the rule it breaks, or empty.
  std::string build(const Row& row, KeyRecord& record) const {
    const auto& v = row.values;
    for (std::size_t c = 0; c < kRequiredColumns; ++c) {
      if (!v[c].present || v[c].null) return missing(static_cast<Column>(c));
    }
    KeyInfo& info = record.info;
    const auto key_id = Uuid::parse(v[kKeyId].text);
    if (!key_id) return "key_id is not a UUID (8-4-4-4-12 hex digits)";
    if (key_id->is_nil()) return "key_id must not be the nil UUID";
    info.key_id = *key_id;

    if (!KeyFormat{}.is_public_key(v[kPublicKey].text)) {
      return "public_key is not a legacy public key (pk_ and 32 characters of [0-9A-Za-z])";
    }
    info.public_key = v[kPublicKey].text;

    const std::string& hash = v[kSecretKeyHash].text;
    if (hash.size() != 2 * record.digest.bytes.size() ||
        !hex_decode(hash, record.digest.bytes.data())) {
      return "secret_key_hash must be 64 hex digits";
    }
    record.digest.pepper_id = options_.pepper_id;

    const auto account_id = Uuid::parse(v[kAccountId].text);
    if (!account_id) return "account_id is not a UUID (8-4-4-4-12 hex digits)";
    if (account_id->is_nil()) return "account_id must not be the nil UUID";
    info.account_id = *account_id;

    const std::string& status = v[kStatus].text;
    const bool expired = status == "expired";
    if (status == "active" || expired) {
      info.status = KeyStatus::active;
    } else if (status == "revoked") {
      info.status = KeyStatus::revoked;
    } else {
      return "status must be active, revoked or expired";
    }

    const auto created_at = parse_timestamp(v[kCreatedAt].text);
    if (!created_at) return bad_timestamp(kCreatedAt);
    info.created_at = *created_at;
    info.updated_at = *created_at;
    for (Column c : {kExpiresAt, kLastUsedAt}) {
      if (!v[c].present || v[c].null) continue;
      const auto t = parse_timestamp(v[c].text);
      if (!t) return bad_timestamp(c);
      (c == kExpiresAt ? info.expires_at : info.last_used_at) = *t;
    }
    if (expired) {
      // Never valid again: its expiry, or its creation when it has none, brought
      // forward to now if later (doc/import.md, invariant 7).
      info.expires_at = std::min(info.expires_at.value_or(info.created_at), now_);
    }

    // The rules of create(), so an imported key could have been created here.
    CreateRequest request;
    if (v[kTitle].present && !v[kTitle].null && !trim_ascii(v[kTitle].text).empty()) {
      request.title = v[kTitle].text;
    } else {
      request.title = kDefaultTitle;
    }
    if (v[kDescription].present && !v[kDescription].null) {
      request.description = v[kDescription].text;
    }
    // A secret key pasted into a title or description would be stored and listed in
    // plain text: the row is refused, and the copies made here wiped.
    for (std::string* text : {&request.title, &request.description}) {
      if (detail::holds_secret_key(*text)) {
        OPENSSL_cleanse(request.title.data(), request.title.size());
        OPENSSL_cleanse(request.description.data(), request.description.size());
        return text == &request.title ? "title holds a secret key (sk_...): remove it"
                                      : "description holds a secret key (sk_...): remove it";
      }
    }
    try {
      CreateRequest normal = normalize_request(request);
      info.title = std::move(normal.title);
      info.description = std::move(normal.description);
    } catch (const Error& e) {
      if (e.code() != ErrorCode::invalid_argument) throw;
      return e.what();  // names the field and rule, never the value
    }
    info.version = 1;
    return {};
  }

  Store& store_;
  const ImportOptions& options_;
  TimePoint now_;
  const ChangeAudit& audit_;
  const std::function<void(const KeyInfo&)>& imported_;
  ImportReport report_;
};

void check_can_import(const Hasher& hasher, const ValidatorOptions& validation,
                      const ImportOptions& options) {
  // The Validator reads a pair in the first of its formats (format, then also_accept in
  // order) that accepts the public key. Another format that accepts some legacy public
  // keys shares them with the legacy one: whichever comes first reads the other's keys,
  // then refuses their secrets, so one of the two kinds never validates.
  std::vector<const KeyFormat*> formats{&validation.format};
  for (const KeyFormat& f : validation.also_accept) formats.push_back(&f);
  bool legacy = false;
  for (const KeyFormat* f : formats) {
    if (is_legacy(*f)) {
      legacy = true;
    } else if (reads_legacy_public_keys(*f)) {
      throw Error(ErrorCode::invalid_argument,
                  "one of the manager's key formats has public keys of the legacy shape (pk_ "
                  "and 32 characters): its keys and the imported ones could not be told apart. "
                  "Give it a public prefix that no legacy key has (such as pk_live_) or a "
                  "checksum");
    }
  }
  if (!legacy) {
    throw Error(ErrorCode::invalid_argument,
                "none of the manager's key formats accepts the legacy keys being imported "
                "(pk_ and 32 characters): add KeyFormat{} to ValidatorOptions::also_accept");
  }
  const std::vector<std::uint32_t> ids =
      guarded("listing the peppers", [&] { return hasher.pepper_ids(); });
  if (std::find(ids.begin(), ids.end(), options.pepper_id) == ids.end()) {
    throw Error(ErrorCode::invalid_argument,
                "the hasher has no pepper with id " + std::to_string(options.pepper_id) +
                    ", which the imported digests are under: give it the legacy pepper "
                    "(the Python service's API_KEY_SECRET)");
  }
}

void import_json_lines(ByteSource& bytes, Importer& importer) {
  LineReader lines(bytes, kMaxRowBytes);
  Row row;
  bool too_long = false;
  while (lines.next(too_long)) {
    const std::uint64_t line = lines.line_number();
    if (too_long) {
      importer.reject(line, "the line is longer than 1 MiB");
      continue;
    }
    if (is_blank(lines.line())) continue;
    row.clear();
    std::string reason = parse_json_row(lines.line(), row);
    lines.clear();
    if (!reason.empty()) {
      importer.reject(line, std::move(reason));
    } else {
      importer.row(line, row);
    }
  }
  row.clear();
}

// Where each kept column is in a CSV row (kAbsent when the header does not name it),
// and how many fields a row has.
constexpr std::size_t kAbsent = std::numeric_limits<std::size_t>::max();
struct CsvHeader {
  std::array<std::size_t, kColumns> position{};
  std::size_t width = 0;
};

// Checks the header row `record`, which `reader` read. Throws Error(invalid_argument)
// when it is not valid CSV, names a column twice or lacks a required one.
CsvHeader check_csv_header(const CsvReader& reader, const CsvRecord& record) {
  if (record.too_long || record.malformed) {
    throw Error(ErrorCode::invalid_argument, "the CSV header row is not valid CSV");
  }
  CsvHeader header;
  header.position.fill(kAbsent);
  header.width = record.fields.size();
  for (std::size_t i = 0; i < header.width; ++i) {
    const auto column = column_of(reader.text(record.fields[i]));
    if (!column) continue;  // a column not kept
    if (header.position[*column] != kAbsent) {
      throw Error(ErrorCode::invalid_argument,
                  "the CSV header names column " + std::string(kColumnNames[*column]) + " twice");
    }
    header.position[*column] = i;
  }
  for (std::size_t c = 0; c < kRequiredColumns; ++c) {
    if (header.position[c] == kAbsent) {
      throw Error(ErrorCode::invalid_argument, "the CSV header has no column " +
                                                   std::string(kColumnNames[c]) +
                                                   " (the first row must name the columns)");
    }
  }
  return header;
}

// Reads the header row, the first record of `reader`'s input, and checks it. Throws
// Error(invalid_argument) when there is none, and as check_csv_header().
CsvHeader read_csv_header(CsvReader& reader, CsvRecord& record) {
  if (!reader.next(record)) {
    throw Error(ErrorCode::invalid_argument, "the CSV input has no header row");
  }
  return check_csv_header(reader, record);
}

void import_csv(ByteSource& bytes, Importer& importer) {
  CsvReader reader(bytes, kMaxRowBytes);
  CsvRecord record;
  const CsvHeader header = read_csv_header(reader, record);
  const std::array<std::size_t, kColumns>& position = header.position;
  const std::size_t width = header.width;
  reader.clear();

  Row row;
  while (reader.next(record)) {
    if (record.too_long) {
      importer.reject(record.line, "the row is longer than 1 MiB");
      continue;
    }
    if (record.malformed) {
      reader.clear();
      importer.reject(record.line, "the row is not valid CSV (a misplaced or unclosed quote)");
      continue;
    }
    if (record.fields.size() != width) {
      reader.clear();
      importer.reject(record.line, "the row has " + std::to_string(record.fields.size()) +
                                       " fields; the header has " + std::to_string(width));
      continue;
    }
    row.clear();
    for (std::size_t c = 0; c < kColumns; ++c) {
      if (position[c] == kAbsent) continue;
      const CsvField& field = record.fields[position[c]];
      Value& value = row.values[c];
      value.present = true;
      value.null = field.is_null();
      value.text.assign(reader.text(field));
    }
    reader.clear();
    importer.row(record.line, row);
  }
  row.clear();
}

}  // namespace

ImportReport import_keys(Store& store, const Hasher& hasher, const ValidatorOptions& validation,
                         std::istream& in, const ImportOptions& options, const ChangeAudit& audit,
                         const std::function<void(const KeyInfo&)>& imported) {
  check_can_import(hasher, validation, options);
  if (!in || in.rdbuf() == nullptr) {
    throw Error(ErrorCode::invalid_argument, "the import input cannot be read");
  }
  const std::shared_ptr<Clock> clock = validation.clock ? validation.clock : system_clock();
  Importer importer(store, options, clock->now(), audit, imported);
  ByteSource bytes(*in.rdbuf());
  switch (options.format) {
    case ImportFormat::json_lines: import_json_lines(bytes, importer); break;
    case ImportFormat::csv: import_csv(bytes, importer); break;
    default: throw Error(ErrorCode::invalid_argument, "unknown import format");
  }
  if (bytes.failed()) {
    // A read error ended the input: the report covers the rows read; the caller sees
    // in.bad(). (setstate() throws when the caller asked for that; the report is kept.)
    try {
      in.setstate(std::ios::badbit);
    } catch (const std::ios_base::failure&) {
    }
  }
  return importer.take_report();
}

}  // namespace apikeys::detail

namespace apikeys {

namespace {

// A streambuf over bytes it does not own, read only, that says how many were read.
class ViewBuf : public std::streambuf {
 public:
  explicit ViewBuf(std::string_view bytes) {
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-const-cast): get area only; never written.
    char* p = const_cast<char*>(bytes.data());
    setg(p, p, p + bytes.size());
  }
  [[nodiscard]] std::size_t consumed() const noexcept {
    return static_cast<std::size_t>(gptr() - eback());
  }
};

}  // namespace

bool check_import_start(std::string_view start, bool whole, ImportFormat format) {
  switch (format) {
    case ImportFormat::json_lines: return true;  // no header: each line stands alone
    case ImportFormat::csv: break;
    default: throw Error(ErrorCode::invalid_argument, "unknown import format");
  }
  ViewBuf buf(start);
  detail::ByteSource bytes(buf);
  detail::CsvReader reader(bytes, detail::kMaxRowBytes);
  detail::CsvRecord record;
  if (whole) {
    (void)detail::read_csv_header(reader, record);
    return true;
  }
  if (!reader.next(record)) return false;  // nothing but empty lines yet
  // A header over the size limit is refused whatever follows. Otherwise it is known
  // only when it ended at a line break: before the end of `start`, or at its very end
  // (a line break there that a quote left open would make the record malformed).
  const bool ended = record.too_long || buf.consumed() < start.size() ||
                     (!record.malformed && !start.empty() && start.back() == '\n');
  if (!ended) return false;
  (void)detail::check_csv_header(reader, record);
  return true;
}

}  // namespace apikeys
