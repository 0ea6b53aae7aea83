// Types for KeyManager::import_keys(), which moves keys from the reference Python
// service (its `api_keys` table, exported as JSON lines or CSV) into a Store, so the
// secrets its customers hold keep working: see README.md, "Migrating from the Python
// service".
// Thread-safety and ownership: plain values.
#ifndef APIKEYS_IMPORT_HPP
#define APIKEYS_IMPORT_HPP

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/export.hpp"
#include "apikeys/hasher.hpp"

namespace apikeys {

/// How the rows are written.
/// Columns (JSON members) read: key_id, public_key, secret_key_hash, account_id, status
/// and created_at are required; title, description, expires_at and last_used_at are
/// optional. UUIDs are canonical 8-4-4-4-12, either case; the digest is 64 hex digits,
/// either case; status is active, revoked or expired; a timestamp is
/// "YYYY-MM-DD[T ]HH:MM:SS[.fraction, up to 9 digits]" and a UTC offset ("Z", "+HH",
/// "+HH:MM" or "+HHMM", either sign), kept to the microsecond. A title or description
/// holding a secret key ("sk_" and 32 base62 characters anywhere, as every legacy or
/// branded secret has) rejects the row.
enum class ImportFormat : std::uint8_t {
  /// One JSON object per line, as a REST export gives them; timestamps like
  /// "2026-11-24T19:00:28.123456+00:00". Blank lines are skipped; a member that is
  /// null or absent is NULL; members of other names are ignored; a known member twice
  /// rejects the row.
  json_lines,
  /// CSV with a header row naming the columns, as PostgreSQL's
  /// `COPY api_keys TO ... WITH (FORMAT csv, HEADER)` writes it: an unquoted empty field
  /// is NULL, quoted fields may hold commas, doubled quotes and line breaks; timestamps
  /// like "2026-11-24 19:00:28.123456+00". The header may list the columns in any order
  /// and others besides; empty lines are skipped.
  csv,
};

/// Options for KeyManager::import_keys(). Every field states its default.
/// Thread-safety and ownership: a plain value.
struct ImportOptions {
  ImportFormat format = ImportFormat::json_lines;  ///< Default JSON lines.
  /// The pepper id the exported digests were made under (the hasher must know it for
  /// the keys to validate). Default kLegacyPepperId.
  std::uint32_t pepper_id = kLegacyPepperId;
  /// Most rejections kept in ImportReport::rejections; the count goes on. Default 1000.
  std::size_t max_rejections_listed = 1000;
};

/// One row that was not imported.
/// Thread-safety and ownership: a plain value. The reason never holds the row's digest.
struct ImportRejection {
  std::uint64_t line = 0;  ///< The line the row starts on, from 1 (CSV: the header is 1).
  std::string reason;      ///< Which field broke which rule.
};

/// What an import did. imported + skipped + rejected is the number of rows read.
/// Thread-safety and ownership: a plain value that owns its rejections.
struct ImportReport {
  std::uint64_t imported = 0;  ///< Rows written as new keys.
  std::uint64_t skipped = 0;   ///< Rows whose key is already in the store (same key id
                               ///< and public key): a second run skips every row.
  std::uint64_t rejected = 0;  ///< Rows refused; see rejections.
  /// The first ImportOptions::max_rejections_listed rejections, in line order.
  std::vector<ImportRejection> rejections;
};

/// Checks the start of import input for what refuses all of it, so that a caller can
/// refuse it before it writes or creates anything (the CLI asks before it creates a
/// database). For CSV that is the header row: absent, not valid CSV, naming a column
/// twice or lacking a required one, refused as KeyManager::import_keys() refuses it
/// (which reads it first and writes nothing then). JSON lines have no header: true.
/// `start` is the input's first bytes; `whole` says they are all of it. Returns true
/// when `start` decides and the input is usable, false when the header may go on past
/// `start` (read more and ask again; a header over 1 MiB is refused once `start` holds
/// that much). Throws Error(invalid_argument), with the message import_keys() would
/// give, when it is not usable. Thread-safety: a pure function of its arguments.
[[nodiscard]] APIKEYS_EXPORT bool check_import_start(std::string_view start, bool whole,
                                                     ImportFormat format);

}  // namespace apikeys

#endif  // APIKEYS_IMPORT_HPP
