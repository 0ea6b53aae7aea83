// The apikeys command-line tool; see cli.hpp.

#include "cli.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "../src/hex.hpp"
#include "../src/json_escape.hpp"
#include "../src/secret_text.hpp"
#include "../src/text.hpp"
#include "apikeys/apikeys.hpp"
#if defined(APIKEYS_HAS_POSTGRES)
#include "apikeys/postgres_store.hpp"
#endif
#if defined(APIKEYS_HAS_REDIS)
#include "apikeys/redis_cache.hpp"
#endif

namespace apikeys::cli {
namespace {

using Json = nlohmann::ordered_json;  // keeps fields in the documented order

// Overwrites `n` bytes at `p` with zeros through a volatile pointer, so the compiler
// cannot drop the stores as dead (the buffer is about to be freed).
void wipe_bytes(char* p, std::size_t n) noexcept {
  volatile char* v = p;
  for (std::size_t i = 0; i < n; ++i) v[i] = 0;
}

// Wipes the whole buffer, also bytes past size() that an earlier, longer value left.
void wipe(std::string& s) noexcept {
  s.resize(s.capacity());  // never reallocates; makes every byte ours to overwrite
  wipe_bytes(s.data(), s.size());
  s.clear();
}

// Wipes a string when the scope ends, whichever way it ends (return or throw).
class WipeGuard {
 public:
  explicit WipeGuard(std::string& s) noexcept : s_(s) {}
  ~WipeGuard() { wipe(s_); }
  WipeGuard(const WipeGuard&) = delete;
  WipeGuard& operator=(const WipeGuard&) = delete;

 private:
  std::string& s_;
};

bool is_base62(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// The CLI issues and checks keys of the default KeyFormat: "sk_" + 32 base62 characters.
constexpr std::string_view kSecretPrefix = "sk_";
constexpr std::size_t kSecretBodyChars = 32;

// How every placeholder and the redaction marker start.
constexpr std::string_view kNotShown = "<not shown";

// True when `text` contains `lower` (lower-case ASCII, e.g. a pepper's hex), in any letter
// case.
// An empty `lower` is in no text (no pepper given: nothing to look for).
bool contains_ignore_case(std::string_view text, std::string_view lower) noexcept {
  if (lower.empty() || text.size() < lower.size()) return false;
  for (std::size_t at = 0; at + lower.size() <= text.size(); ++at) {
    std::size_t i = 0;
    while (i < lower.size()) {
      const char c = text[at + i];
      const char l = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
      if (l != lower[i]) break;
      ++i;
    }
    if (i == lower.size()) return true;
  }
  return false;
}

constexpr std::size_t kMinPepperHexChars = 64;  // 32 bytes, what HmacSha256Hasher requires
constexpr std::size_t kMaxPepperFileBytes = 4096;

}  // namespace

// A core file would hold the pepper and any secret in memory, so none is written; a
// process that is not dumpable is also closed to ptrace and /proc/PID/mem from other
// processes of the same user. Both before anything reads a secret.
void disable_core_dumps() noexcept {
  const rlimit none{0, 0};
  (void)::setrlimit(RLIMIT_CORE, &none);
  (void)::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

bool is_space(char c) noexcept {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool holds_secret_key(std::string_view text) noexcept {
  return apikeys::detail::holds_secret_key(text);
}

bool may_hold_secret(std::string_view text) noexcept {
  if (text.find(kSecretPrefix) != std::string_view::npos) return true;
  if (text.find(kNotShown) != std::string_view::npos) return true;
  if (contains_ignore_case(text, "postgres://") || contains_ignore_case(text, "postgresql://") ||
      contains_ignore_case(text, "password="))
    return true;
  std::size_t run = 0;
  for (char c : text) {
    run = is_base62(c) ? run + 1 : 0;
    if (run >= kSecretBodyChars) return true;
  }
  return false;
}

CommandLine::CommandLine(int argc, char** argv) : argv_(argv) {
  const auto n = static_cast<std::size_t>(argc > 0 ? argc : 0);
  view_.reserve(n);
  hidden_.reserve(n);
  whole_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::string_view arg(argv[i]);
    if (i == 0 || !may_hold_secret(arg)) {
      view_.emplace_back(arg);
      continue;
    }
    const std::size_t keep = kept_prefix(arg);
    hidden_.emplace_back(arg.substr(keep));
    whole_.emplace_back(arg);
    wipe_bytes(argv[i] + keep, arg.size() - keep);
    view_.push_back(std::string(arg.substr(0, keep)) + std::string(kPlaceholderStart) +
                    std::to_string(hidden_.size() - 1) + ">");
  }
  for (const std::string& s : view_) pointers_.push_back(s.c_str());
  pointers_.push_back(nullptr);
}

std::string_view CommandLine::resolve(const std::string& parsed) const noexcept {
  const std::string_view p(parsed);
  // A placeholder, alone or after the prefix its argument kept ("-<not shown #3>": a
  // value that starts with a dash, which the parser took whole as an option's value).
  const std::size_t at = p.find(kPlaceholderStart);
  if (at == std::string_view::npos || p.size() <= at + kPlaceholderStart.size() + 1 ||
      p.back() != '>') {
    return p;
  }
  std::size_t index = 0;
  const std::size_t digits = at + kPlaceholderStart.size();
  for (const char c : p.substr(digits, p.size() - digits - 1)) {
    if (c < '0' || c > '9' || index > hidden_.size()) return p;
    index = index * 10 + static_cast<std::size_t>(c - '0');
  }
  if (index >= hidden_.size()) return p;
  if (at == 0) return hidden_[index].reveal();
  // The whole argument, when `parsed` is that argument as the parser saw it.
  const std::string_view whole = whole_[index].reveal();
  return whole.substr(0, at) == p.substr(0, at) && whole.size() - hidden_[index].size() == at
             ? whole
             : p;
}

void CommandLine::blank(const std::string& parsed) noexcept {
  if (parsed.empty() || parsed == "-") return;
  for (std::size_t i = 1; i < view_.size(); ++i) {
    if (view_[i] == parsed) wipe_bytes(argv_[i], std::strlen(argv_[i]));
  }
}

std::string CommandLine::redact(std::string message) const {
  constexpr std::string_view kMarker = "<not shown>";
  // Room for every replacement first: each value hidden is at least 8 bytes and the
  // marker 11, so the message grows by at most 3/8, and a string that grew would leave
  // a copy of the value in the block it left.
  message.reserve(message.size() + message.size() / 2 + kMarker.size());
  // Resume after the marker, which may itself hold the value ("<not shown>").
  const auto hide = [&message, kMarker](std::string_view value) {
    for (auto at = message.find(value); at != std::string::npos;
         at = message.find(value, at + kMarker.size())) {
      message.replace(at, value.size(), kMarker);
    }
  };
  for (const apikeys::SecretString& h : hidden_) {
    const std::string_view value = h.reveal();
    if (value.size() < 8) continue;
    // A message may quote the value escaped (SqliteStore escapes a file name's bytes
    // outside printable ASCII): those forms go first, as they are the longer.
    const auto hide_escaped = [&](std::string escaped) {
      if (escaped != value) hide(escaped);
      wipe_bytes(escaped.data(), escaped.size());
    };
    hide_escaped(apikeys::detail::escape_unprintable(value));
    hide_escaped(apikeys::detail::escape_controls(value));
    hide(value);
  }
  return message;
}

std::size_t CommandLine::kept_prefix(std::string_view arg) noexcept {
  if (arg.size() < 2 || arg[0] != '-') return 0;
  const std::size_t dashes = arg[1] == '-' ? 2 : 1;
  // "--name=" is kept only when `name` is an option's name (letters, digits, '-' and
  // '_'; nothing that may be a secret): anything else before an '=' ("-was sk_…=old",
  // a value that starts with a dash) may hold the secret itself.
  const auto eq = arg.find('=');
  if (eq == std::string_view::npos || eq == dashes) return dashes;
  const std::string_view name = arg.substr(dashes, eq - dashes);
  const bool plain = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
  });
  return plain && !may_hold_secret(name) ? eq + 1 : dashes;
}

apikeys::SecretString decode_pepper(std::string_view text, const std::string& source) {
  const std::string_view hex = trim(text);
  if (hex.size() < kMinPepperHexChars) {
    throw UsageError(source +
                     " must hold at least 64 hex characters (32 bytes); generate one with "
                     "`openssl rand -hex 32`");
  }
  if (hex.size() % 2 != 0) throw UsageError(source + " is not valid hex (odd number of digits)");
  std::string raw(hex.size() / 2, '\0');  // sized once: no reallocation leaves a copy behind
  WipeGuard guard(raw);
  if (!apikeys::detail::hex_decode(hex, raw.data())) throw UsageError(source + " is not valid hex");
  return apikeys::SecretString(raw);
}

std::string redact_arguments(std::string message, int argc, const char* const* argv) {
  constexpr std::size_t kMinSecretLike = 8;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg.size() > 1 && arg[0] == '-') {
      const auto eq = arg.find('=');
      if (eq == std::string_view::npos) continue;  // an option name, or a lone "-"
      arg.remove_prefix(eq + 1);                   // --name=value: the value part
    }
    if (arg.size() < kMinSecretLike) continue;
    // Resume after the marker: an argument that occurs in "<not shown>" itself would
    // otherwise be found again inside it, forever (found by fuzz_cli).
    constexpr std::string_view kMarker = "<not shown>";
    for (auto at = message.find(arg); at != std::string::npos;
         at = message.find(arg, at + kMarker.size())) {
      message.replace(at, arg.size(), kMarker);
    }
  }
  return message;
}

namespace {

// The longest key find_keys() reports: a branded secret with the longest brand,
// "{brand}_sk_", 32 random and 6 checksum characters.
constexpr std::size_t kLongestKey =
    apikeys::KeyFormat::kMaxBrand + 4 + 32 + apikeys::KeyFormat::kChecksumLength;
// What find_keys() needs around a key to judge it: the character before it and the
// one after it.
constexpr std::size_t kScanTail = kLongestKey + 1;

// Reads into [p, p + want) until it is full or the input ends; `got` says how much was
// read. False on a read error.
bool read_full(int fd, char* p, std::size_t want, std::size_t& got) noexcept {
  got = 0;
  while (got < want) {
    const ssize_t n = ::read(fd, p + got, want - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

// The buffer holds a few bytes carried over from the chunk before, then the new chunk.
// Only keys that start before its last kScanTail bytes are judged (each then has the
// character after it in the buffer), unless the input has ended; the buffer then
// starts again one byte before the first key not yet judged, so that key also has the
// character before it, and a key already judged is not reported twice.
bool scan_fd(int fd, std::size_t chunk, const std::function<void(const ScanFinding&)>& report) {
  chunk = std::max(chunk, kMinScanChunk);
  std::string buf(chunk + kScanTail + 1, '\0');  // sized once: never reallocates
  WipeGuard guard(buf);
  std::size_t kept = 0;      // bytes carried over at the start of buf
  std::uint64_t base = 0;    // where buf[0] is in the input
  std::uint64_t judged = 0;  // keys starting before this offset have been judged
  std::uint64_t line = 1;    // the line buf[counted] is on
  bool first = true;
  for (;;) {
    std::size_t got = 0;
    if (!read_full(fd, buf.data() + kept, chunk, got)) return false;
    const std::size_t size = kept + got;
    const bool last = got < chunk;  // read_full() stops short only at the end
    if (first && std::memchr(buf.data(), '\0', std::min(size, kScanBinaryProbe)) != nullptr)
      return true;
    first = false;
    const std::string_view text(buf.data(), size);
    const std::size_t end = last ? size : size - kScanTail;  // judge keys starting before it
    std::size_t counted = 0;                                 // newlines counted in buf[0, counted)
    for (const apikeys::FoundKey& k : apikeys::find_keys(text)) {
      if (base + k.offset < judged) continue;
      if (k.offset >= end) break;
      line += static_cast<std::uint64_t>(
          std::count(text.begin() + static_cast<std::ptrdiff_t>(counted),
                     text.begin() + static_cast<std::ptrdiff_t>(k.offset), '\n'));
      counted = k.offset;
      ScanFinding f;
      f.offset = base + k.offset;
      f.line = line;
      f.legacy = k.legacy;
      f.secret = k.secret;
      f.shown = k.shown;
      report(f);
    }
    if (last) return true;
    const std::size_t from = end - 1;  // the byte before the first key not yet judged
    line += static_cast<std::uint64_t>(
        std::count(text.begin() + static_cast<std::ptrdiff_t>(counted),
                   text.begin() + static_cast<std::ptrdiff_t>(from), '\n'));
    std::memmove(buf.data(), buf.data() + from, size - from);
    kept = size - from;
    base += from;
    judged = base + 1;
  }
}

// See cli.hpp.
std::size_t secret_slot(std::string_view json, int depth) {
  constexpr std::string_view kName = "\"secret_key\"";
  const auto skip_space = [&json](std::size_t at) {
    while (at < json.size() &&
           (json[at] == ' ' || json[at] == '\n' || json[at] == '\t' || json[at] == '\r')) {
      ++at;
    }
    return at;
  };
  std::size_t slot = std::string_view::npos;
  int found = 0;
  int level = 0;
  for (std::size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (c == '{' || c == '[') {
      ++level;
    } else if (c == '}' || c == ']') {
      --level;
    } else if (c == '"') {
      std::size_t end = i + 1;  // the string's closing quote
      while (end < json.size() && json[end] != '"') end += json[end] == '\\' ? 2 : 1;
      if (end >= json.size()) return std::string_view::npos;
      if (level == depth && json.substr(i, end + 1 - i) == kName) {
        const std::size_t colon = skip_space(end + 1);
        if (colon < json.size() && json[colon] == ':') {
          const std::size_t value = skip_space(colon + 1);
          if (json.substr(value, 2) == "\"\"") {
            ++found;
            slot = value + 1;
          }
        }
      }
      i = end;
    }
  }
  return found == 1 ? slot : std::string_view::npos;
}

// See cli.hpp; the library's audit JSON is escaped the same way.
std::string escape_json_output(std::string_view json) {
  return apikeys::detail::escape_json_text(json);
}

namespace {

// The pepper, and its lower-case hex to recognise it where it does not belong.
struct Pepper {
  apikeys::SecretString bytes;
  apikeys::SecretString hex;
};

Pepper make_pepper(apikeys::SecretString bytes) {
  std::string hex(2 * bytes.size(), '\0');  // sized once: no reallocation leaves a copy behind
  WipeGuard guard(hex);
  apikeys::detail::hex_encode(bytes.reveal().data(), bytes.size(), hex.data());
  Pepper p;
  p.hex = apikeys::SecretString(hex);
  p.bytes = std::move(bytes);
  return p;
}

// Reads a file of at most `max_bytes` bytes that holds a secret: read unbuffered into a
// buffer sized once, and wiped. Its path is never shown: it may be the secret itself,
// pasted in the wrong place. `option` names it in messages.
apikeys::SecretString read_secret_file(std::string_view file, const std::string& option,
                                       std::size_t max_bytes, std::size_t stated_max = 0) {
  const std::string cannot = "cannot read the file given to " + option + " (its path is not shown)";
  std::string path(file);  // exactly sized (no reallocation); wiped
  WipeGuard path_guard(path);
  std::ifstream in;
  in.rdbuf()->pubsetbuf(nullptr, 0);  // unbuffered: no stray copy in a stream buffer
  in.open(path, std::ios::in | std::ios::binary);
  if (!in) throw UsageError(cannot);
  // Read into a buffer sized up front (pipes have no size, so read one byte more than
  // allowed to detect an oversized file); the SecretString copies the bytes read.
  std::string content(max_bytes + 1, '\0');
  WipeGuard guard(content);
  in.read(content.data(), static_cast<std::streamsize>(content.size()));
  if (in.bad()) throw UsageError(cannot);
  const auto n = static_cast<std::size_t>(in.gcount());
  if (n > max_bytes) {
    // The limit the documentation states (a line break may come on top of it).
    const std::size_t stated = stated_max != 0 ? stated_max : max_bytes;
    throw UsageError(option + " is larger than " + std::to_string(stated) + " bytes");
  }
  return apikeys::SecretString(std::string_view(content.data(), n));
}

// Reads the pepper from `pepper_file`, or else from APIKEYS_PEPPER. The file's path is
// never shown: it may be the pepper itself, pasted in the wrong place.
Pepper read_pepper(std::string_view pepper_file) {
  if (!pepper_file.empty()) {
    const apikeys::SecretString content =
        read_secret_file(pepper_file, "--pepper-file", kMaxPepperFileBytes);
    return make_pepper(decode_pepper(content.reveal(), "--pepper-file"));
  }
  const char* env = std::getenv("APIKEYS_PEPPER");
  if (env == nullptr || *env == '\0') {
    throw UsageError(
        "no pepper: set APIKEYS_PEPPER to at least 64 hex characters (32 bytes, e.g. from "
        "`openssl rand -hex 32`) or pass --pepper-file FILE");
  }
  return make_pepper(decode_pepper(env, "APIKEYS_PEPPER"));
}

// The pepper as refuse_pepper_early() read it, or the error it met, for the command's
// own load_pepper() to take: a --pepper-file may be a pipe (`<(...)`), read only once.
struct EarlyPepper {
  std::optional<Pepper> pepper;
  std::exception_ptr error;
};
std::optional<EarlyPepper>& early_pepper() {
  static std::optional<EarlyPepper> early;
  return early;
}

// The pepper: the one read early, once, else read now.
Pepper load_pepper(std::string_view pepper_file) {
  std::optional<EarlyPepper>& early = early_pepper();
  if (!early) return read_pepper(pepper_file);
  EarlyPepper taken = std::move(*early);
  early.reset();
  if (taken.error) std::rethrow_exception(taken.error);
  return std::move(*taken.pepper);
}

// The longest legacy pepper HmacSha256Hasher takes.
constexpr std::size_t kMaxLegacyPepperBytes = 4096;

// The legacy pepper in `file` (--legacy-pepper-file), or nothing when none was given: the
// raw bytes of the reference service's API_KEY_SECRET, less one trailing "\n" or "\r\n"
// (as echo or an editor leaves), 1 to 4096 bytes. Its path is never shown.
std::optional<apikeys::SecretString> load_legacy_pepper(std::string_view file) {
  if (file.empty()) return std::nullopt;
  // Two bytes more, for a 4096-byte pepper and its line break.
  const apikeys::SecretString content = read_secret_file(
      file, "--legacy-pepper-file", kMaxLegacyPepperBytes + 2, kMaxLegacyPepperBytes);
  std::string_view bytes = content.reveal();
  if (bytes.size() >= 2 && bytes.substr(bytes.size() - 2) == "\r\n") {
    bytes.remove_suffix(2);
  } else if (!bytes.empty() && bytes.back() == '\n') {
    bytes.remove_suffix(1);
  }
  if (bytes.empty()) {
    throw UsageError(
        "--legacy-pepper-file is empty: it must hold the Python service's API_KEY_SECRET "
        "(1 to 4096 bytes)");
  }
  if (bytes.size() > kMaxLegacyPepperBytes)
    throw UsageError("--legacy-pepper-file is larger than 4096 bytes");
  return apikeys::SecretString(bytes);
}

// The format of branded keys for `brand` (--brand, else APIKEYS_BRAND), or nothing when
// neither is set. The brand is not shown in the message.
std::optional<apikeys::KeyFormat> brand_format(std::string_view brand, const char* source) {
  if (brand.empty()) return std::nullopt;
  try {
    return apikeys::KeyFormat::branded(brand);
  } catch (const apikeys::Error&) {
    throw UsageError(std::string(source) +
                     " must be 2 to 16 characters, each a lower-case letter or a digit "
                     "([a-z0-9]), e.g. acme");
  }
}

// Refuses a value that holds a secret key or the pepper where neither belongs: it would
// be kept in plain text (a title or description in the database and in `list`'s output,
// a database file's name in every directory listing). Checked before any copy is made.
void refuse_secret(std::string_view value, const char* option, std::string_view pepper_hex) {
  if (holds_secret_key(value) || contains_ignore_case(value, pepper_hex)) {
    throw UsageError(std::string(option) +
                     " holds a secret key or the pepper; refused (the value is not shown)");
  }
}

// refuse_secret() for JSON text (--metadata), whose string escapes could spell either
// ("sk\u005f..."): checked as written and once decoded, in a copy wiped after.
void refuse_json_secret(std::string_view value, const char* option, std::string_view pepper_hex) {
  refuse_secret(value, option, pepper_hex);
  if (value.find('\\') == std::string_view::npos) return;
  std::string decoded;
  const WipeGuard wiped(decoded);
  decoded.reserve(value.size());  // never outgrown: no reallocation leaves a copy
  apikeys::detail::decode_json_escapes(value, decoded);
  if (holds_secret_key(decoded) || contains_ignore_case(decoded, pepper_hex)) {
    throw UsageError(std::string(option) +
                     " holds a secret key or the pepper; refused (the value is not shown)");
  }
}

apikeys::Uuid parse_uuid(std::string_view text, const char* option) {
  const auto id = apikeys::Uuid::parse(text);
  if (!id) {
    throw UsageError(
        std::string(option) +
        " must be a UUID in 8-4-4-4-12 hex form, e.g. 123e4567-e89b-12d3-a456-426614174000");
  }
  return *id;
}

// True when `text` passes the rules KeyManager applies to the text of a ChangeContext
// (apikeys::check_change_context(): valid UTF-8 without control, invisible or
// line-breaking characters), its length aside.
bool fit_context_text(std::string_view text) {
  apikeys::ChangeContext probe;
  probe.reason = std::string(text.substr(0, apikeys::ChangeContext::kMaxReasonLength));
  try {
    apikeys::check_change_context(probe);
    return true;
  } catch (const apikeys::Error&) {
    return false;
  }
}

// Checks a value bound for the audit trail by the rules KeyManager applies to a
// ChangeContext (observer.hpp): at most `max_bytes` bytes of UTF-8 without control,
// invisible or line-breaking characters, and (as for a title) no secret key. Checked
// here, before the database is opened, so that a refused value writes nothing, not even
// a new database file. The message names `option`, never the value.
void check_audit_text(std::string_view text, const std::string& option, std::size_t max_bytes) {
  if (text.size() > max_bytes) {
    throw UsageError(option + " must be at most " + std::to_string(max_bytes) + " bytes");
  }
  refuse_secret(text, option.c_str(), {});
  if (!fit_context_text(text)) {
    throw UsageError(option +
                     " must be valid UTF-8 without control, invisible or line-breaking characters");
  }
}

// True when `id` may stand as the default actor's id: what check_audit_text accepts, and
// not empty.
bool fit_actor_id(std::string_view id) noexcept {
  return !id.empty() && id.size() <= apikeys::Actor::kMaxActorIdLength && !holds_secret_key(id) &&
         fit_context_text(id);
}

// The name of the user running the command: the login name of the session
// (getlogin_r), else USER or LOGNAME, else the name of the effective uid; "unknown"
// when none of them gives a name fit to be an actor id.
std::string login_name() {
  std::array<char, 257> login{};  // LOGIN_NAME_MAX (256) and the NUL
  if (::getlogin_r(login.data(), login.size()) == 0 && fit_actor_id(login.data())) {
    return login.data();
  }
  for (const char* variable : {"USER", "LOGNAME"}) {
    const char* value = std::getenv(variable);
    if (value != nullptr && fit_actor_id(value)) return value;
  }
  const long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buffer(hint > 0 ? static_cast<std::size_t>(hint) : std::size_t{16384});
  constexpr std::size_t kMaxBuffer = std::size_t{1} << 20;
  for (;;) {
    passwd entry{};
    passwd* found = nullptr;
    const int rc = ::getpwuid_r(::geteuid(), &entry, buffer.data(), buffer.size(), &found);
    if (rc == ERANGE && buffer.size() < kMaxBuffer) {
      buffer.resize(buffer.size() * 2);
      continue;
    }
    if (rc == 0 && found != nullptr && found->pw_name != nullptr && fit_actor_id(found->pw_name)) {
      return found->pw_name;
    }
    return "unknown";
  }
}

std::optional<apikeys::ActorType> parse_actor_type(std::string_view name) noexcept {
  for (const apikeys::ActorType type :
       {apikeys::ActorType::user, apikeys::ActorType::service, apikeys::ActorType::system}) {
    if (name == apikeys::to_string(type)) return type;
  }
  return std::nullopt;
}

// Reads `n` decimal digits of `text` at `pos` into `out`, moving `pos` past them.
bool take_digits(std::string_view text, std::size_t& pos, std::size_t n, int& out) noexcept {
  if (text.size() - pos < n) return false;
  out = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = text[pos + i];
    if (c < '0' || c > '9') return false;
    out = out * 10 + (c - '0');
  }
  pos += n;
  return true;
}

// Days from 1970-01-01 to the date (proleptic Gregorian; Howard Hinnant's
// days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

// An RFC 3339 time (--since, --before): "2026-11-25T05:59:32.123Z", as every command
// prints times, or with an offset ("2026-11-25T07:59:32+02:00"); 'T' and 'Z' in either
// case; a fraction of 1 to 9 digits, rounded up to the millisecond, the precision the
// audit trail keeps (so "at or after" and "before" mean what they say of every stored
// time). The message names the option, never the value.
apikeys::TimePoint parse_time(std::string_view text, const char* option) {
  const auto bad = [option] {
    return UsageError(std::string(option) +
                      " must be an RFC 3339 time, e.g. 2026-11-25T05:59:32.123Z or "
                      "2026-11-25T07:59:32+02:00");
  };
  std::size_t pos = 0;
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  const auto expect = [&](char lower, char upper) {
    if (pos >= text.size() || (text[pos] != lower && text[pos] != upper)) return false;
    ++pos;
    return true;
  };
  if (!take_digits(text, pos, 4, year) || !expect('-', '-') || !take_digits(text, pos, 2, month) ||
      !expect('-', '-') || !take_digits(text, pos, 2, day) || !expect('t', 'T') ||
      !take_digits(text, pos, 2, hour) || !expect(':', ':') || !take_digits(text, pos, 2, minute) ||
      !expect(':', ':') || !take_digits(text, pos, 2, second)) {
    throw bad();
  }
  std::int64_t millis = 0;
  if (expect('.', '.')) {
    std::size_t digits = 0;
    bool rest = false;  // a non-zero digit below the millisecond
    for (; pos < text.size() && text[pos] >= '0' && text[pos] <= '9'; ++pos, ++digits) {
      if (digits < 3) {
        millis = millis * 10 + (text[pos] - '0');
      } else if (text[pos] != '0') {
        rest = true;
      }
    }
    if (digits == 0 || digits > 9) throw bad();
    for (std::size_t d = digits; d < 3; ++d) millis *= 10;
    if (rest) ++millis;
  }
  int offset_seconds = 0;
  if (!expect('z', 'Z')) {
    if (pos >= text.size() || (text[pos] != '+' && text[pos] != '-')) throw bad();
    const int sign = text[pos] == '-' ? -1 : 1;
    ++pos;
    int offset_hours = 0, offset_minutes = 0;
    if (!take_digits(text, pos, 2, offset_hours) || !expect(':', ':') ||
        !take_digits(text, pos, 2, offset_minutes) || offset_hours > 23 || offset_minutes > 59) {
      throw bad();
    }
    offset_seconds = sign * (offset_hours * 3600 + offset_minutes * 60);
  }
  if (pos != text.size()) throw bad();
  constexpr std::array<int, 12> kDays{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  if (year < 1 || month < 1 || month > 12 || day < 1 ||
      day > kDays[static_cast<std::size_t>(month - 1)] + (month == 2 && leap ? 1 : 0) ||
      hour > 23 || minute > 59 || second > 59) {
    throw bad();
  }
  const std::int64_t seconds =
      days_from_civil(year, static_cast<unsigned>(month), static_cast<unsigned>(day)) * 86400 +
      std::int64_t{hour} * 3600 + std::int64_t{minute} * 60 + second - offset_seconds;
  return apikeys::from_unix_millis(seconds * 1000 + millis);  // years 1-9999: no overflow
}

Json time_or_null(const std::optional<apikeys::TimePoint>& t) {
  return t ? Json(apikeys::format_utc(*t)) : Json(nullptr);
}

// True when `text` is one JSON object (whitespace around it allowed), without a NUL.
bool is_object_text(const std::string& text) {
  const std::size_t first = text.find_first_not_of(" \t\r\n");
  return first != std::string::npos && text[first] == '{' && text.find('\0') == std::string::npos &&
         Json::accept(text);
}

// The marker embedded_object() leaves in place of a JSON object to print as stored:
// U+0001, "metadata:", this process's nonce, ":", the text in hex, U+0001. The nonce is
// drawn from the CSPRNG once per process, so no stored text (a title written to the
// store by other means, say) can hold a marker dump() would splice.
const std::string& marker_nonce() {
  static const std::string nonce = apikeys::Uuid::random().to_string();
  return nonce;
}
// How dump() prints the marker's start and end: nlohmann escapes U+0001 as \u0001.
constexpr std::string_view kMarkerOpen = "\"\\u0001metadata:";
constexpr std::string_view kMarkerClose = "\\u0001\"";

// Replaces invalid UTF-8 instead of throwing; the library already rejects it on create.
std::string dump(const Json& j) {
  std::string out = j.dump(2, ' ', false, Json::error_handler_t::replace);
  // Splice each embedded object's text over its marker (see embedded_object()).
  const std::string open = std::string(kMarkerOpen) + marker_nonce() + ":";
  for (std::size_t at = out.find(open); at != std::string::npos; at = out.find(open, at)) {
    const std::size_t hex = at + open.size();
    const std::size_t close = out.find(kMarkerClose, hex);
    if (close == std::string::npos) break;
    const std::optional<std::string> raw =
        apikeys::detail::hex_decode(std::string_view(out).substr(hex, close - hex));
    // Checked again (embedded_object() did): only ever one whole object goes in.
    const std::string text = raw && is_object_text(*raw) ? *raw : std::string("null");
    out.replace(at, close + kMarkerClose.size() - at, text);
    at += text.size();
  }
  return escape_json_output(out);
}

// Writes to stdout and reports whether it got there; a lost `create` output loses the
// only copy of a secret, which the caller must hear about.
bool emit(const std::string& text) {
  std::cout << text << '\n';
  std::cout.flush();
  return static_cast<bool>(std::cout);
}

// Writes all of `text` to stdout with write(2): no stream buffer keeps a copy.
bool write_stdout(std::string_view text) noexcept {
  while (!text.empty()) {
    const ssize_t n = ::write(STDOUT_FILENO, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    text.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Prints `json` (dump() of an object with one "secret_key": "" member at nesting depth
// `depth`, see secret_slot()) with `secret` written into that field. The secret never
// enters a JSON value or a string that grows: the output is assembled once, in a buffer
// sized up front, and wiped after the write.
bool emit_with_secret(const std::string& json, std::string_view secret, int depth) {
  const std::size_t split = secret_slot(json, depth);
  const bool plain =
      std::all_of(secret.begin(), secret.end(), [](char c) { return is_base62(c) || c == '_'; });
  if (split == std::string_view::npos || !plain)
    throw std::logic_error("cannot place the secret in the output");
  std::string out;
  WipeGuard guard(out);
  out.reserve(json.size() + secret.size() + 1);
  out.append(json, 0, split).append(secret).append(json, split, std::string::npos).push_back('\n');
  std::cout.flush();
  return write_stdout(out);
}

constexpr std::size_t kMaxTokenLine = 1024;

// Reads the first line of stdin into `line` one byte at a time with read(2): no stream
// buffer keeps a copy of the token, and what follows the line is left for the next
// reader. A longer line is cut at kMaxTokenLine bytes (no token is that long, so the
// verdict is still `malformed`). Returns the line without surrounding white space.
std::string_view read_token_line(std::string& line) {
  line.assign(kMaxTokenLine, '\0');
  std::size_t n = 0;
  while (n < line.size()) {
    const ssize_t r = ::read(STDIN_FILENO, line.data() + n, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw UsageError("verify -: cannot read stdin");
    if (r == 0) break;
    if (line[n] == '\n') {
      line[n] = '\0';
      return trim(std::string_view(line.data(), n));
    }
    ++n;
  }
  if (n == 0) throw UsageError("verify -: no token on stdin");
  return trim(std::string_view(line.data(), n));
}

// What the parser writes. Never a secret: an argument that may be one reaches these as
// a placeholder (see CommandLine). Numbers are taken as text and checked here, so that
// a bad one gets a message naming its rule.
struct Parsed {
  std::string db;
  std::string pepper_file;
  std::string pg_schema;
  std::string redis;
  std::string redis_prefix;
  std::string account;
  std::string key_id;
  std::string title;
  std::string description;
  std::string metadata;
  std::vector<std::string> scopes;
  std::string expires_in_days;  // decimal only: parse_number(), not CLI11's base guess
  std::string expected_version;
  std::string grace_seconds;
  std::string limit;
  std::string cursor;
  std::string status;
  bool clear_metadata = false;
  bool clear_scopes = false;
  bool no_expiry = false;
  std::string first;   // verify: PUBLIC, or TOKEN, or "-" for a token on stdin
  std::string second;  // verify: SECRET
  std::string brand;
  std::string legacy_pepper_file;
  std::string import_file;    // import: FILE, or "-" for stdin
  std::string import_format;  // import: jsonl or csv
  std::vector<std::string> scan_paths;
  std::vector<std::string> rate_limits;  // create, update: NAME=LIMIT/PERIOD[:BURST] each
  bool clear_rate_limits = false;
  std::string credits;  // create, update: the balance
  bool no_credits = false;
  std::string refill_amount;
  std::string refill_interval;  // daily or monthly
  std::string refill_mode;      // reset or add
  std::string refill_cap;
  bool no_refill = false;
  std::string credits_set;  // credits: --set N
  std::string credits_add;  // credits: --add N (may be negative)
  std::string cost;         // verify: --cost N
  std::string actor;        // the commands that change keys: TYPE:ID
  std::string reason;       // the commands that change keys: why
  std::string since;        // audit: --since TIME
  std::string before;       // audit-prune: --before TIME
};

// Which options were given, as the parser saw them.
struct Given {
  bool title = false;
  bool description = false;
  bool metadata = false;
  bool scopes = false;
  bool expires_in_days = false;
  bool expected_version = false;
  bool grace_seconds = false;
  bool limit = false;
  bool cursor = false;
  bool status = false;
  bool rate_limits = false;
  bool credits = false;
  bool refill_amount = false;
  bool refill_interval = false;
  bool refill_mode = false;
  bool refill_cap = false;
  bool credits_set = false;
  bool credits_add = false;
  bool cost = false;
  bool actor = false;
  bool key_id = false;  // audit's --key-id, which is optional there
  bool since = false;
};

// What the commands use: Parsed with each placeholder replaced by its real value. Views
// into the Parsed and the CommandLine, which outlive them.
struct Options {
  Options(const Parsed& p, const Given& g, const CommandLine& cmd)
      : db(cmd.resolve(p.db)),
        pepper_file(cmd.resolve(p.pepper_file)),
        pg_schema(cmd.resolve(p.pg_schema)),
        redis(cmd.resolve(p.redis)),
        redis_prefix(cmd.resolve(p.redis_prefix)),
        account(cmd.resolve(p.account)),
        key_id(cmd.resolve(p.key_id)),
        title(cmd.resolve(p.title)),
        description(cmd.resolve(p.description)),
        metadata(cmd.resolve(p.metadata)),
        expires_in_days(cmd.resolve(p.expires_in_days)),
        expected_version(cmd.resolve(p.expected_version)),
        grace_seconds(cmd.resolve(p.grace_seconds)),
        limit(cmd.resolve(p.limit)),
        cursor(cmd.resolve(p.cursor)),
        status(cmd.resolve(p.status)),
        clear_metadata(p.clear_metadata),
        clear_scopes(p.clear_scopes),
        no_expiry(p.no_expiry),
        first(cmd.resolve(p.first)),
        second(cmd.resolve(p.second)),
        brand(cmd.resolve(p.brand)),
        legacy_pepper_file(cmd.resolve(p.legacy_pepper_file)),
        import_file(cmd.resolve(p.import_file)),
        import_format(cmd.resolve(p.import_format)),
        clear_rate_limits(p.clear_rate_limits),
        credits(cmd.resolve(p.credits)),
        no_credits(p.no_credits),
        refill_amount(cmd.resolve(p.refill_amount)),
        refill_interval(cmd.resolve(p.refill_interval)),
        refill_mode(cmd.resolve(p.refill_mode)),
        refill_cap(cmd.resolve(p.refill_cap)),
        no_refill(p.no_refill),
        credits_set(cmd.resolve(p.credits_set)),
        credits_add(cmd.resolve(p.credits_add)),
        cost(cmd.resolve(p.cost)),
        actor(cmd.resolve(p.actor)),
        reason(cmd.resolve(p.reason)),
        since(cmd.resolve(p.since)),
        before(cmd.resolve(p.before)),
        given(g) {
    scopes.reserve(p.scopes.size());
    for (const std::string& s : p.scopes) scopes.push_back(cmd.resolve(s));
    scan_paths.reserve(p.scan_paths.size());
    for (const std::string& s : p.scan_paths) scan_paths.push_back(cmd.resolve(s));
    rate_limits.reserve(p.rate_limits.size());
    for (const std::string& s : p.rate_limits) rate_limits.push_back(cmd.resolve(s));
  }

  std::string_view db;
  std::string_view pepper_file;
  std::string_view pg_schema;
  std::string_view redis;
  std::string_view redis_prefix;
  std::string_view account;
  std::string_view key_id;
  std::string_view title;
  std::string_view description;
  std::string_view metadata;
  std::vector<std::string_view> scopes;
  std::string_view expires_in_days;  // expiry_days() reads it
  std::string_view expected_version;
  std::string_view grace_seconds;
  std::string_view limit;
  std::string_view cursor;
  std::string_view status;
  bool clear_metadata;
  bool clear_scopes;
  bool no_expiry;
  std::string_view first;
  std::string_view second;
  std::string_view brand;
  std::string_view legacy_pepper_file;
  std::string_view import_file;
  std::string_view import_format;
  std::vector<std::string_view> scan_paths;
  std::vector<std::string_view> rate_limits;
  bool clear_rate_limits;
  std::string_view credits;
  bool no_credits;
  std::string_view refill_amount;
  std::string_view refill_interval;
  std::string_view refill_mode;
  std::string_view refill_cap;
  bool no_refill;
  std::string_view credits_set;
  std::string_view credits_add;
  std::string_view cost;
  std::string_view actor;
  std::string_view reason;
  std::string_view since;
  std::string_view before;
  Given given;
  // The format keys are issued in and checked against first: set from --brand or
  // APIKEYS_BRAND before a command runs; nothing for the default format.
  std::optional<apikeys::KeyFormat> format;
};

// Who makes a change and why, for the audit trail: --actor TYPE:ID (split at the first
// ':'), else the user running the command; --reason. Checked before anything is read or
// written; the pepper was looked for in both before (refuse_pepper_early).
apikeys::ChangeContext change_context(const Options& o) {
  apikeys::ChangeContext context;
  if (o.given.actor) {
    const auto colon = o.actor.find(':');
    const std::optional<apikeys::ActorType> type =
        colon == std::string_view::npos ? std::nullopt : parse_actor_type(o.actor.substr(0, colon));
    if (!type || colon + 1 == o.actor.size()) {
      throw UsageError(
          "--actor must be TYPE:ID, TYPE being user, service or system and ID not empty, "
          "e.g. service:billing-sync");
    }
    const std::string_view id = o.actor.substr(colon + 1);
    check_audit_text(id, "--actor's ID", apikeys::Actor::kMaxActorIdLength);
    context.actor.type = *type;
    context.actor.id = std::string(id);
  } else {
    context.actor.type = apikeys::ActorType::user;
    context.actor.id = login_name();
  }
  check_audit_text(o.reason, "--reason", apikeys::ChangeContext::kMaxReasonLength);
  context.reason = std::string(o.reason);
  return context;
}

// True when --db names a PostgreSQL server (a libpq URI) rather than a SQLite file.
bool is_postgres_url(std::string_view db) noexcept {
  return db.rfind("postgresql://", 0) == 0 || db.rfind("postgres://", 0) == 0;
}

// A decimal number from `min` to `max`, digits only (no sign, no white space). The
// message names the option and the range, never the value.
std::uint64_t parse_number(std::string_view text, const char* option, std::uint64_t min,
                           std::uint64_t max) {
  const auto bad = [&] {
    return UsageError(std::string(option) + " must be a whole number from " + std::to_string(min) +
                      " to " + std::to_string(max));
  };
  if (text.empty() || text.size() > 20) throw bad();
  std::uint64_t v = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') throw bad();
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - digit) / 10) throw bad();
    v = v * 10 + digit;
  }
  if (v < min || v > max) throw bad();
  return v;
}

// The rate limits and credits that `create` or `update` was given, checked.
struct AdmissionChanges {
  std::optional<std::vector<apikeys::RateLimit>> rate_limits;  // --rate-limit...
  bool clear_rate_limits = false;                              // --clear-rate-limits
  std::optional<std::uint64_t> credits;                        // --credits N
  bool no_credits = false;                                     // --no-credits
  std::optional<apikeys::CreditRefill> refill;                 // --refill-amount and co.
  bool no_refill = false;                                      // --no-refill

  [[nodiscard]] bool any() const noexcept {
    return rate_limits || clear_rate_limits || credits || no_credits || refill || no_refill;
  }
};

// A library message without its "rate limit: " or "credits: " prefix, for a message
// that names the option instead.
std::string without_topic(const std::string& message) {
  for (const std::string_view topic :
       {std::string_view("rate limit: "), std::string_view("credits: ")}) {
    if (message.rfind(topic, 0) == 0) return message.substr(topic.size());
  }
  return message;
}

// Parses and checks the rate-limit and credit options, before anything is read or
// written. A spec that holds a secret key is refused unseen (refuse_secret); the pepper
// was looked for before (refuse_pepper_early).
AdmissionChanges admission_changes(const Options& o, bool create) {
  constexpr std::uint64_t kMaxCredits = apikeys::KeyPolicyLimits::kMaxCredits;
  const Given& g = o.given;
  AdmissionChanges out;
  if (g.rate_limits) {
    std::vector<apikeys::RateLimit> limits;
    for (const std::string_view spec : o.rate_limits) {
      refuse_secret(spec, "--rate-limit", {});
      try {
        limits.push_back(apikeys::parse_rate_limit(spec));
      } catch (const apikeys::Error& e) {
        throw UsageError("--rate-limit: " + without_topic(e.what()) +
                         " (expected NAME=LIMIT/PERIOD[:BURST], PERIOD in s, m, h or d from 1s "
                         "to 1d, e.g. per-minute=100/1m or burst=10/1s:20)");
      }
    }
    try {
      out.rate_limits = apikeys::normalize_rate_limits(std::move(limits));
    } catch (const apikeys::Error& e) {
      throw UsageError("--rate-limit: " + without_topic(e.what()));
    }
  }
  out.clear_rate_limits = o.clear_rate_limits;
  if (g.credits) out.credits = parse_number(o.credits, "--credits", 0, kMaxCredits);
  out.no_credits = o.no_credits;
  if (g.refill_amount != g.refill_interval) {
    throw UsageError("--refill-amount and --refill-interval go together: give both");
  }
  if ((g.refill_mode || g.refill_cap) && !g.refill_amount) {
    throw UsageError("--refill-mode and --refill-cap need --refill-amount and --refill-interval");
  }
  if (g.refill_amount) {
    apikeys::CreditRefill refill;
    refill.amount = parse_number(o.refill_amount, "--refill-amount", 1, kMaxCredits);
    if (o.refill_interval == "daily") {
      refill.interval = apikeys::RefillInterval::daily;
    } else if (o.refill_interval == "monthly") {
      refill.interval = apikeys::RefillInterval::monthly;
    } else {
      throw UsageError("--refill-interval must be daily or monthly");
    }
    if (!g.refill_mode || o.refill_mode == "reset") {
      refill.mode = apikeys::RefillMode::reset;
    } else if (o.refill_mode == "add") {
      refill.mode = apikeys::RefillMode::add_capped;
    } else {
      throw UsageError("--refill-mode must be reset or add");
    }
    if (g.refill_cap) {
      if (refill.mode != apikeys::RefillMode::add_capped) {
        throw UsageError("--refill-cap applies only with --refill-mode add");
      }
      refill.cap = parse_number(o.refill_cap, "--refill-cap", 1, kMaxCredits);
    }
    out.refill = refill;
  }
  out.no_refill = o.no_refill;
  if (out.refill && out.no_credits) {
    throw UsageError(
        "--no-credits removes the refill too: it cannot be given with --refill-amount");
  }
  if (create && out.refill && !out.credits) {
    throw UsageError("--refill-amount needs --credits N, the starting balance");
  }
  return out;
}

const char* interval_name(apikeys::RefillInterval interval) noexcept {
  return interval == apikeys::RefillInterval::monthly ? "monthly" : "daily";
}

const char* mode_name(apikeys::RefillMode mode) noexcept {
  return mode == apikeys::RefillMode::add_capped ? "add" : "reset";
}

#if defined(APIKEYS_HAS_REDIS)
// --redis HOST:PORT (an IPv6 address in brackets: [::1]:6379).
struct RedisAddress {
  std::string host;
  int port = 0;
};

RedisAddress parse_redis(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    throw UsageError("--redis must be HOST:PORT, e.g. 127.0.0.1:6379");
  }
  std::string_view host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) throw UsageError("--redis must be HOST:PORT, e.g. 127.0.0.1:6379");
  RedisAddress a;
  a.host = std::string(host);
  a.port = static_cast<int>(parse_number(text.substr(colon + 1), "--redis's PORT", 1, 65535));
  return a;
}
#endif

// Checks the backend options before anything is read or written: refuses a --db that
// holds a secret key (before any copy of it is made), options this build cannot honour,
// and, unless the command may create it, a SQLite file that does not exist. These
// checks never show the path or URL: it may be a secret pasted in the wrong place, or
// hold a password. Once they pass, a SQLite file that cannot be opened is named in
// SqliteStore's error, its unprintable bytes escaped (detail::escape_unprintable()).
void check_db(const Options& o, bool may_create_db) {
  refuse_secret(o.db, "--db", {});
  if (!o.redis.empty()) {
#if defined(APIKEYS_HAS_REDIS)
    (void)parse_redis(o.redis);
#else
    throw UsageError(
        "--redis: this build has no Redis support (build with -DAPIKEYS_WITH_REDIS=ON)");
#endif
  }
  if (is_postgres_url(o.db)) {
#if !defined(APIKEYS_HAS_POSTGRES)
    throw UsageError(
        "--db: this build has no PostgreSQL support (build with -DAPIKEYS_WITH_POSTGRES=ON)");
#else
    return;
#endif
  }
  if (!o.pg_schema.empty()) throw UsageError("--pg-schema applies only to a postgresql:// --db");
  // A libpq key=value string ("host=db password=..."), which would otherwise become the
  // name of a new SQLite file: refused without being shown, as it may hold a password.
  if (o.db.find('=') != std::string::npos) {
    throw UsageError(
        "--db looks like a key=value connection string, which is not accepted: give a "
        "postgresql:// URL, or a SQLite path without '='");
  }
  if (!may_create_db) {
    // Only `create` makes a new database: a mistyped --db path must not look like an
    // empty database ("no such key") and leave a stray file behind.
    std::error_code ec;
    if (!std::filesystem::exists(std::filesystem::path(o.db), ec)) {
      throw apikeys::Error(apikeys::ErrorCode::storage,
                           "no database at the --db path (only `create` makes a new one)");
    }
  }
}

// A Cache that passes erase() on to a shared cache and holds nothing itself. The CLI
// runs one command per process: reading or filling a shared cache would not pay, and
// the Validator clears its cache when it is built, which for a shared cache would empty
// it for every node at each command. What the CLI owes the shared cache is the erase of
// every key it changes, which KeyManager makes through this cache before it returns.
// An erase that fails is tried twice more, then counted rather than thrown: the change
// has committed by then, and a throw would lose the command's output (rotate's new
// secret with it) while running the command again would not erase (nothing changes the
// second time). The command prints its output, then reports the failure (exit 4).
// Thread-safety: erase() as the shared cache's; failures() from any thread. Ownership:
// shares the shared cache.
class EraseOnlyCache final : public apikeys::Cache {
 public:
  explicit EraseOnlyCache(std::shared_ptr<apikeys::Cache> shared) : shared_(std::move(shared)) {}
  std::optional<apikeys::Verdict> get(std::string_view, const apikeys::Digest&) override {
    return std::nullopt;
  }
  std::uint64_t fill_token(std::string_view) override { return 0; }
  void put(std::string_view, const apikeys::Digest&, const apikeys::Verdict&,
           std::chrono::milliseconds, std::uint64_t) override {}
  void erase(std::string_view public_key) override {
    constexpr int kAttempts = 3;
    for (int attempt = 1;; ++attempt) {
      try {
        shared_->erase(public_key);
        return;
      } catch (const std::exception&) {
        if (attempt == kAttempts) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100 * attempt));
    }
    failures_.fetch_add(1, std::memory_order_relaxed);
  }
  void clear() override {}

  // How many erases failed after every attempt.
  [[nodiscard]] std::size_t failures() const noexcept {
    return failures_.load(std::memory_order_relaxed);
  }

 private:
  std::shared_ptr<apikeys::Cache> shared_;
  std::atomic<std::size_t> failures_{0};
};

// A KeyManager (reached with ->) and the shared cache its changes are erased from.
struct Manager {
  std::unique_ptr<apikeys::KeyManager> keys;
  std::shared_ptr<apikeys::Hasher> hasher;
  std::shared_ptr<EraseOnlyCache> shared_cache;  // null without --redis

  apikeys::KeyManager* operator->() const noexcept { return keys.get(); }

  // `rc`, unless the change succeeded but the shared cache could not be told: then a
  // message and kExitFailure (the output has been printed).
  [[nodiscard]] int finish(int rc) const {
    if (rc != kExitOk || !shared_cache || shared_cache->failures() == 0) return rc;
    std::cerr << "apikeys: the change was saved, but the shared cache (--redis) could not be "
                 "told: nodes that do not poll the store's revision may answer from the old "
                 "state until their cached verdicts expire\n";
    return kExitFailure;
  }
};

std::shared_ptr<apikeys::Store> open_store(const Options& o, bool may_create_db) {
  if (is_postgres_url(o.db)) {
#if defined(APIKEYS_HAS_POSTGRES)
    apikeys::PostgresStoreOptions store_options;
    if (!o.pg_schema.empty()) store_options.schema = std::string(o.pg_schema);
    std::string conninfo(o.db);  // exactly sized (no reallocation); may hold a password
    WipeGuard guard(conninfo);
    return std::make_shared<apikeys::PostgresStore>(conninfo, store_options);
#endif
  }
  apikeys::SqliteStoreOptions store_options;
  store_options.create_if_missing = may_create_db;  // an empty file, like a missing one
  return std::make_shared<apikeys::SqliteStore>(std::string(o.db), store_options);
}

// `may_create_db`: only `create` and `import` initialise an empty file, as they alone make
// a missing one.
// The pepper id the CLI gives the pepper (APIKEYS_PEPPER or --pepper-file).
constexpr std::uint32_t kPepperId = 1;

// The hasher: the pepper as id kPepperId, which makes every new digest, and with
// --legacy-pepper-file the legacy pepper (apikeys::kLegacyPepperId), which only verifies.
// The legacy pepper's bytes are wiped once the hasher holds its own copy.
std::shared_ptr<apikeys::HmacSha256Hasher> make_hasher(const Options& o, const Pepper& pepper) {
  const std::optional<apikeys::SecretString> legacy = load_legacy_pepper(o.legacy_pepper_file);
  if (!legacy) return std::make_shared<apikeys::HmacSha256Hasher>(pepper.bytes.reveal());
  const std::vector<apikeys::Pepper> peppers{{kPepperId, pepper.bytes.reveal()}};
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(peppers, kPepperId, legacy->reveal());
  if (hasher->legacy_pepper_is_short()) {
    std::cerr << "apikeys: warning: the legacy pepper is " << legacy->size()
              << " bytes; under 32 bytes it may be guessed from a stolen digest: let "
                 "verification move its keys to the current pepper, then retire it\n";
  }
  return hasher;
}

// The values that would keep a pasted pepper in plain text (a database file's name; the
// audit trail's actor and reason; a rate limit's name; Redis key names) checked for it,
// once, before anything copies them: change_context(), check_db() and
// admission_changes() do, ahead of the command's own load of the pepper. A pepper that
// cannot be loaded here is left to that load, which reports it where it always has
// (load_pepper() takes what was read here: a pipe can be read once).
void refuse_pepper_early(const Options& o) {
  // A Redis prefix is written into key names in Redis: no secret key in it either.
  refuse_secret(o.redis_prefix, "--redis-prefix", {});
  std::optional<EarlyPepper>& early = early_pepper();
  early.emplace();
  try {
    early->pepper.emplace(read_pepper(o.pepper_file));
  } catch (...) {
    early->error = std::current_exception();
    return;
  }
  const std::string_view hex = early->pepper->hex.reveal();
  refuse_secret(o.db, "--db", hex);
  refuse_secret(o.actor, "--actor", hex);
  refuse_secret(o.reason, "--reason", hex);
  refuse_secret(o.redis_prefix, "--redis-prefix", hex);
  for (const std::string_view spec : o.rate_limits) refuse_secret(spec, "--rate-limit", hex);
}

// `hasher`: the one make_hasher() made, when the command made it first; else made here.
Manager open_manager(const Options& o, const Pepper& pepper, bool may_create_db,
                     std::shared_ptr<apikeys::HmacSha256Hasher> hasher = nullptr) {
  if (!hasher) hasher = make_hasher(o, pepper);
  // Defaults: no cache (one-shot process), last use recorded by the Validator's
  // background writer and flushed when the KeyManager is destroyed, before exit (with
  // the digests of keys verified under the legacy pepper, rewritten under the current
  // one).
  apikeys::KeyManagerOptions options;
  if (o.format) {
    // Issue branded keys; keep accepting the default format's.
    options.validation.format = *o.format;
    options.validation.also_accept = {apikeys::KeyFormat{}};
  }
  std::shared_ptr<apikeys::Store> store = open_store(o, may_create_db);
  Manager manager;
  manager.hasher = hasher;
#if defined(APIKEYS_HAS_REDIS)
  if (!o.redis.empty()) {
    const RedisAddress address = parse_redis(o.redis);
    apikeys::RedisCacheOptions cache_options;
    cache_options.host = address.host;
    cache_options.port = address.port;
    if (!o.redis_prefix.empty()) cache_options.prefix = std::string(o.redis_prefix);
    cache_options.local_tier = false;  // nothing to keep between commands
    manager.shared_cache = std::make_shared<EraseOnlyCache>(
        std::make_shared<apikeys::RedisCache>(std::move(cache_options)));
    options.validation.cache = manager.shared_cache;
    options.validation.revision_poll_interval = std::chrono::milliseconds(0);
  }
#endif
  manager.keys = std::make_unique<apikeys::KeyManager>(std::move(store), std::move(hasher),
                                                       std::move(options));
  return manager;
}

// A key's metadata, and an audit event's before and after (which may hold it), printed
// exactly as stored: parsing and dumping them again would change numbers (a 30-digit
// integer, -0, 1E2). embedded_object() puts a marker string in their place, holding the
// stored text in hex; dump() splices the text over the marker. No other printed string
// can hold a marker: it carries a nonce no stored text knows. {} when a key has no
// metadata; null, with a warning on stderr, for a stored value that is not a JSON
// object (the library never writes one; throwing here would lose a rotated key's new
// secret).

// `text`, a JSON object, to be printed exactly as it is (see above); `what` names it in
// the warning for text that is not one.
Json embedded_object(const std::string& text, const char* what) {
  if (!is_object_text(text)) {
    std::cerr << "apikeys: warning: " << what << " is not a JSON object; shown as null\n";
    return Json(nullptr);
  }
  return Json("\x01metadata:" + marker_nonce() + ":" + apikeys::detail::hex_encode(text) + "\x01");
}

Json metadata_json(const std::string& metadata) {
  if (metadata.empty()) return Json::object();
  return embedded_object(metadata, "a stored key's metadata");
}

Json uuid_or_null(const std::optional<apikeys::Uuid>& id) {
  return id ? Json(id->to_string()) : Json(nullptr);
}

// A lineage's credits as a key shows them: null without credits; the cap of a reset
// refill (which has none) is null.
Json credits_json(const std::optional<apikeys::Credits>& credits) {
  if (!credits) return Json(nullptr);
  Json j;
  j["remaining"] = credits->remaining;
  j["refill"] = nullptr;
  j["next_refill_at"] = nullptr;
  if (const std::optional<apikeys::CreditRefill>& r = credits->refill) {
    Json refill;
    refill["amount"] = r->amount;
    refill["interval"] = interval_name(r->interval);
    refill["mode"] = mode_name(r->mode);
    refill["cap"] =
        r->mode == apikeys::RefillMode::add_capped ? Json(r->effective_cap()) : Json(nullptr);
    j["refill"] = std::move(refill);
    j["next_refill_at"] = apikeys::format_utc(
        apikeys::refill_period_start(r->interval, credits->refilled_period + 1));
  }
  return j;
}

// A key as every command prints it. `with_secret`: with "secret_key": "" after
// "public_key", for emit_with_secret to fill in.
Json key_json(const apikeys::KeyInfo& k, bool with_secret = false) {
  Json j;
  j["key_id"] = k.key_id.to_string();
  j["public_key"] = k.public_key;
  if (with_secret) j["secret_key"] = "";
  j["title"] = k.title;
  j["description"] = k.description;
  j["status"] = apikeys::to_string(k.status);
  j["created_at"] = apikeys::format_utc(k.created_at);
  j["expires_at"] = time_or_null(k.expires_at);
  j["last_used_at"] = time_or_null(k.last_used_at);
  j["updated_at"] = apikeys::format_utc(k.updated_at);
  j["version"] = k.version;
  j["metadata"] = metadata_json(k.metadata);
  j["scopes"] = k.scopes;
  j["rotated_from"] = uuid_or_null(k.rotated_from);
  j["rotated_to"] = uuid_or_null(k.rotated_to);
  j["lineage_id"] = k.lineage().to_string();
  j["rate_limits"] = Json::array();
  for (const apikeys::RateLimit& l : k.rate_limits) {
    Json limit;
    limit["name"] = l.name;
    limit["limit"] = l.limit;
    limit["period_ms"] = l.period.count();
    limit["burst"] = l.effective_burst();
    j["rate_limits"].push_back(std::move(limit));
  }
  j["credits"] = credits_json(k.credits);
  return j;
}

// The values of --scope, refused if one holds a secret or the pepper (a granted scope
// is stored and listed; a required one is echoed in `missing_scopes`).
std::vector<std::string> scope_values(const Options& o, const Pepper& pepper) {
  std::vector<std::string> scopes;
  for (const std::string_view s : o.scopes) {
    refuse_secret(s, "--scope", pepper.hex.reveal());
    scopes.emplace_back(s);
  }
  return scopes;
}

void refuse_text_secrets(const Options& o, const Pepper& pepper) {
  refuse_secret(o.title, "--title", pepper.hex.reveal());
  refuse_secret(o.description, "--description", pepper.hex.reveal());
  refuse_json_secret(o.metadata, "--metadata", pepper.hex.reveal());
}

// Reports that the account has no such key (exit 3).
int no_such_key(const apikeys::Uuid& account, const apikeys::Uuid& key_id) {
  std::cerr << "apikeys: no key " << key_id.to_string() << " for account " << account.to_string()
            << '\n';
  return kExitNotFound;
}

// --expires-in-days: decimal digits only (CLI11 would read "010" as octal and "0x10" as
// hex), from 1 to KeyManager::kMaxExpiryDays.
int expiry_days(const Options& o) {
  return static_cast<int>(
      parse_number(o.expires_in_days, "--expires-in-days", 1, apikeys::KeyManager::kMaxExpiryDays));
}

int cmd_create(const Options& o) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  const std::optional<int> days =
      o.given.expires_in_days ? std::optional<int>(expiry_days(o)) : std::nullopt;
  const AdmissionChanges admission = admission_changes(o, /*create=*/true);
  const apikeys::ChangeContext context = change_context(o);
  check_db(o, /*may_create_db=*/true);
  const Pepper pepper = load_pepper(o.pepper_file);
  refuse_text_secrets(o, pepper);
  apikeys::CreateRequest request;
  request.title = std::string(o.title);
  request.description = std::string(o.description);
  request.expires_in_days = days;
  request.metadata = std::string(o.metadata);
  request.scopes = scope_values(o, pepper);
  if (admission.rate_limits) request.rate_limits = *admission.rate_limits;
  if (admission.credits) {
    apikeys::Credits credits;
    credits.remaining = *admission.credits;
    credits.refill = admission.refill;
    request.credits = credits;
  }
  // Check the request before touching the database, so a bad request creates nothing.
  request = apikeys::normalize_request(request);

  auto manager = open_manager(o, pepper, /*may_create_db=*/true);
  const apikeys::CreatedKey created = manager->create(account, request, context);
  if (!emit_with_secret(dump(key_json(created.info, true)), created.secret_key.reveal(), 1)) {
    std::cerr << "apikeys: key " << created.info.key_id.to_string()
              << " was created but its secret could not be written to stdout; revoke it\n";
    return kExitFailure;
  }
  return kExitOk;
}

int cmd_list(const Options& o) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  std::optional<apikeys::KeyStatus> status;
  if (o.given.status) {
    status = apikeys::parse_key_status(o.status);
    if (!status) throw UsageError("--status must be active, disabled or revoked");
  }
  const bool paged = o.given.limit || o.given.cursor;
  apikeys::ListOptions options;
  if (o.given.limit) {
    options.limit = static_cast<std::size_t>(
        parse_number(o.limit, "--limit", 1, apikeys::ListOptions::kMaxLimit));
  }
  options.cursor = std::string(o.cursor);
  const WipeGuard cursor_guard(options.cursor);  // a secret given as a cursor by mistake
  options.status = status;
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  if (paged) {
    const apikeys::KeyPage page = manager->list(account, options);
    Json out;
    out["keys"] = Json::array();
    for (const apikeys::KeyInfo& k : page.keys) out["keys"].push_back(key_json(k));
    out["next_cursor"] = page.next_cursor ? Json(*page.next_cursor) : Json(nullptr);
    return emit(dump(out)) ? kExitOk : kExitFailure;
  }
  // The whole listing, as an array (the output of the first releases).
  Json out = Json::array();
  for (const apikeys::KeyInfo& k : manager->list(account)) {
    if (!status || k.status == *status) out.push_back(key_json(k));
  }
  return emit(dump(out)) ? kExitOk : kExitFailure;
}

// The commands that change or show one key and print it: get, update, disable, enable,
// revoke.
enum class KeyCommand { get, update, disable, enable, revoke };

int cmd_key(const Options& o, KeyCommand command) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  const apikeys::Uuid key_id = parse_uuid(o.key_id, "--key-id");
  apikeys::KeyUpdate update;
  AdmissionChanges admission;
  apikeys::ChangeContext context;
  if (command == KeyCommand::update) {
    const Given& g = o.given;
    admission = admission_changes(o, /*create=*/false);
    if (!g.title && !g.description && !g.metadata && !o.clear_metadata && !g.scopes &&
        !o.clear_scopes && !g.expires_in_days && !o.no_expiry && !admission.any()) {
      throw UsageError(
          "update: nothing to change (give --title, --description, --metadata, "
          "--clear-metadata, --scope, --clear-scopes, --expires-in-days, --no-expiry, "
          "--rate-limit, --clear-rate-limits, --credits, --no-credits, --refill-amount with "
          "--refill-interval, or --no-refill)");
    }
    if (g.expected_version) {
      update.expected_version =
          parse_number(o.expected_version, "--expected-version", 1, UINT64_MAX);
    }
    if (g.expires_in_days) update.expires_in_days = expiry_days(o);
  }
  if (command != KeyCommand::get) context = change_context(o);
  check_db(o, false);
  const Pepper pepper = load_pepper(o.pepper_file);
  if (command == KeyCommand::update) {
    const Given& g = o.given;
    refuse_text_secrets(o, pepper);
    if (g.title) update.title = std::string(o.title);
    if (g.description) update.description = std::string(o.description);
    if (g.metadata) update.metadata = std::string(o.metadata);
    if (o.clear_metadata) update.metadata = apikeys::FieldUpdate<std::string>::clear();
    if (g.scopes) update.scopes = scope_values(o, pepper);
    if (o.clear_scopes) update.scopes = apikeys::FieldUpdate<std::vector<std::string>>::clear();
    if (o.no_expiry) update.expires_in_days = apikeys::FieldUpdate<int>::clear();
    if (admission.rate_limits) update.rate_limits = *admission.rate_limits;
    if (admission.clear_rate_limits) {
      update.rate_limits = apikeys::FieldUpdate<std::vector<apikeys::RateLimit>>::clear();
    }
    if (admission.credits) update.credits = *admission.credits;
    if (admission.no_credits) update.credits = apikeys::FieldUpdate<std::uint64_t>::clear();
    if (admission.refill) update.refill = *admission.refill;
    if (admission.no_refill) update.refill = apikeys::FieldUpdate<apikeys::CreditRefill>::clear();
  }
  auto manager = open_manager(o, pepper, /*may_create_db=*/false);
  apikeys::KeyInfo k;
  try {
    switch (command) {
      case KeyCommand::get: k = manager->get(account, key_id); break;
      case KeyCommand::update:
        // A refill needs a balance: refuse it for a key without credits before any field
        // is written (the library refuses it too, but after the key's own fields).
        // --no-refill on such a key has nothing to clear: the other fields apply.
        if (admission.refill && !admission.credits && !manager->get(account, key_id).credits) {
          std::cerr << "apikeys: conflict: the key has no credits: a refill needs a balance; "
                       "give --credits N with it\n";
          return kExitConflict;
        }
        k = manager->update(account, key_id, update, context);
        break;
      case KeyCommand::disable: k = manager->disable(account, key_id, context); break;
      case KeyCommand::enable: k = manager->enable(account, key_id, context); break;
      case KeyCommand::revoke: k = manager->revoke(account, key_id, context); break;
    }
  } catch (const apikeys::Error& e) {
    if (e.code() != apikeys::ErrorCode::not_found) throw;
    return no_such_key(account, key_id);
  }
  return manager.finish(emit(dump(key_json(k))) ? kExitOk : kExitFailure);
}

int cmd_delete(const Options& o) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  const apikeys::Uuid key_id = parse_uuid(o.key_id, "--key-id");
  const apikeys::ChangeContext context = change_context(o);
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  Json out;
  try {
    const apikeys::KeyInfo k = manager->remove(account, key_id, context);
    out["key_id"] = k.key_id.to_string();
    out["deleted"] = true;
  } catch (const apikeys::Error& e) {
    if (e.code() != apikeys::ErrorCode::not_found) throw;
    return no_such_key(account, key_id);
  }
  return manager.finish(emit(dump(out)) ? kExitOk : kExitFailure);
}

int cmd_rotate(const Options& o) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  const apikeys::Uuid key_id = parse_uuid(o.key_id, "--key-id");
  apikeys::RotateRequest request;
  if (o.given.grace_seconds) {
    const auto max = static_cast<std::uint64_t>(apikeys::KeyManager::kMaxRotationGrace.count());
    request.grace = std::chrono::seconds(
        static_cast<std::int64_t>(parse_number(o.grace_seconds, "--grace-seconds", 0, max)));
  }
  const apikeys::ChangeContext context = change_context(o);
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  apikeys::CreatedKey created;
  try {
    created = manager->rotate(account, key_id, request, context);
  } catch (const apikeys::Error& e) {
    if (e.code() != apikeys::ErrorCode::not_found) throw;
    return no_such_key(account, key_id);
  }
  // The new key exists now and its secret is in hand: nothing below may lose it.
  Json out;
  out["new"] = key_json(created.info, true);
  out["old"] = nullptr;
  try {
    out["old"] = key_json(manager->get(account, key_id));
  } catch (const std::exception&) {
    std::cerr << "apikeys: the key was rotated, but it could not be read back (\"old\" is null)\n";
  }
  if (!emit_with_secret(dump(out), created.secret_key.reveal(), 2)) {
    std::cerr << "apikeys: key " << created.info.key_id.to_string()
              << " was created by the rotation but its secret could not be written to stdout; "
                 "revoke it\n";
    return kExitFailure;
  }
  return manager.finish(kExitOk);
}

int cmd_revoke_all(const Options& o) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  const apikeys::ChangeContext context = change_context(o);
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  Json out;
  out["revoked"] = manager->revoke_all(account, context);
  return manager.finish(emit(dump(out)) ? kExitOk : kExitFailure);
}

// `credits --set N | --add N`: the balance of the key's lineage, shared by the keys a
// rotation made from one another.
int cmd_credits(const Options& o) {
  constexpr std::uint64_t kMaxCredits = apikeys::KeyPolicyLimits::kMaxCredits;
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  const apikeys::Uuid key_id = parse_uuid(o.key_id, "--key-id");
  if (o.given.credits_set == o.given.credits_add) {
    throw UsageError("credits: give exactly one of --set N and --add N");
  }
  std::uint64_t set = 0;
  std::int64_t add = 0;
  if (o.given.credits_set) {
    set = parse_number(o.credits_set, "--set", 0, kMaxCredits);
  } else {
    const bool negative = !o.credits_add.empty() && o.credits_add.front() == '-';
    const std::string_view digits = negative ? o.credits_add.substr(1) : o.credits_add;
    std::uint64_t n = 0;
    try {
      n = parse_number(digits, "--add", 0, kMaxCredits);
    } catch (const UsageError&) {
      throw UsageError("--add must be a whole number from -9007199254740992 to 9007199254740992");
    }
    add = negative ? -static_cast<std::int64_t>(n) : static_cast<std::int64_t>(n);
  }
  const apikeys::ChangeContext context = change_context(o);
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  apikeys::KeyInfo k;
  try {
    k = o.given.credits_set ? manager->set_credits(account, key_id, set, context)
                            : manager->add_credits(account, key_id, add, context);
  } catch (const apikeys::Error& e) {
    if (e.code() == apikeys::ErrorCode::not_found) return no_such_key(account, key_id);
    if (e.code() != apikeys::ErrorCode::conflict || o.given.credits_set) throw;
    std::cerr << "apikeys: conflict: the key has no credits to add to; give it a balance "
                 "first with `credits --set N`\n";
    return kExitConflict;
  }
  return manager.finish(emit(dump(key_json(k))) ? kExitOk : kExitFailure);
}

int cmd_verify(const Options& o) {
  std::string line;
  WipeGuard line_guard(line);
  const bool from_stdin = o.first == "-" && o.second.empty();
  apikeys::Requirements requirements;
  if (o.given.cost) {
    requirements.cost = parse_number(o.cost, "--cost", 0, apikeys::KeyPolicyLimits::kMaxCredits);
  }
  const std::string_view token = from_stdin ? read_token_line(line) : std::string_view();
  check_db(o, false);
  const Pepper pepper = load_pepper(o.pepper_file);
  requirements.scopes = scope_values(o, pepper);
  auto manager = open_manager(o, pepper, /*may_create_db=*/false);
  apikeys::ValidationResult r;
  if (from_stdin) {
    r = manager->validate(token, requirements);
  } else if (o.second.empty()) {
    r = manager->validate(o.first, requirements);
  } else {
    r = manager->validator().validate(o.first, o.second, requirements);
  }
  Json out;
  out["valid"] = r.ok();
  out["code"] = apikeys::to_string(r.code);
  out["account_id"] = r.ok() ? Json(r.account_id.to_string()) : Json(nullptr);
  out["key_id"] = r.ok() ? Json(r.key_id.to_string()) : Json(nullptr);
  if (r.ok()) {
    out["scopes"] = r.scopes;
    out["metadata"] = metadata_json(r.metadata);
  }
  const auto remaining = [&r] {
    return r.credits_remaining ? Json(*r.credits_remaining) : Json(nullptr);
  };
  if (r.ok()) {
    out["remaining"] = remaining();
    out["limits"] = Json::array();
    for (std::size_t i = 0; i < r.limits.size() && i < r.rate_limits.size(); ++i) {
      Json limit;
      limit["name"] = r.rate_limits[i].name;
      limit["remaining"] = r.limits[i].remaining;
      limit["reset_ms"] = r.limits[i].reset.count();
      out["limits"].push_back(std::move(limit));
    }
  }
  if (r.code == apikeys::ValidationCode::insufficient_scope)
    out["missing_scopes"] = r.missing_scopes;
  if (r.code == apikeys::ValidationCode::rate_limited) {
    out["limit"] = r.limited_by;
    // null: no wait helps (the cost is above the limit's burst); milliseconds::max()
    // is no number a JSON reader keeps exactly.
    out["retry_after_ms"] = r.retry_after == std::chrono::milliseconds::max()
                                ? Json(nullptr)
                                : Json(r.retry_after.count());
  }
  if (r.code == apikeys::ValidationCode::usage_exceeded) out["remaining"] = remaining();
  if (!emit(dump(out))) return kExitFailure;
  if (r.ok()) return kExitOk;
  // `error` means the check could not be made (store or hasher failure): not a verdict.
  return r.code == apikeys::ValidationCode::error ? kExitFailure : kExitRejected;
}

// The input of `import`: a streambuf that reads a file descriptor with read(2) into a
// buffer the caller owns (and wipes), so that no stdio or filebuf buffer keeps the
// rows. check_start() reads ahead until the start of the input decides whether it is
// usable (apikeys::check_import_start()); what it read is then read again from the top.
// Thread-safety: none. Ownership: borrows the buffer; closes the descriptor when it
// owns it.
class ImportInput : public std::streambuf {
 public:
  // Room for a CSV header of the largest size the import accepts (1 MiB), and as much
  // again of empty lines before it: a header that does not end within it is checked by
  // the import, after the database is open.
  static constexpr std::size_t kBufferBytes = std::size_t{2} << 20;

  ImportInput(int fd, bool owns, std::string& buffer) noexcept
      : fd_(fd), owns_(owns), buf_(buffer.data()), size_(buffer.size()) {
    setg(buf_, buf_, buf_);
  }
  ~ImportInput() override {
    if (owns_) ::close(fd_);
  }
  ImportInput(const ImportInput&) = delete;
  ImportInput& operator=(const ImportInput&) = delete;

  [[nodiscard]] bool is_directory() const noexcept {
    struct stat st {};
    return ::fstat(fd_, &st) == 0 && S_ISDIR(st.st_mode);
  }

  // Reads until the start of the input is known to be usable or not for `format`; then
  // the stream reads from the top again. Throws what check_import_start() throws for
  // input refused as a whole. False when reading failed first; true when usable, or
  // when the buffer filled before the start decided (the header does not end within
  // it, which takes over 1 MiB of empty lines before it: the import then decides).
  bool check_start(apikeys::ImportFormat format) {
    std::size_t filled = 0;
    bool whole = false;  // the end of the input was read
    // At least one read, whatever the format: input that cannot be read at all (standard
    // input a directory) fails here, before the database exists.
    for (;;) {
      const std::size_t n = read_some(buf_ + filled, size_ - filled);
      if (failed_) return false;
      whole = ended_;
      filled += n;
      if (apikeys::check_import_start(std::string_view(buf_, filled), whole, format)) break;
      if (whole || filled == size_) break;
    }
    setg(buf_, buf_, buf_ + filled);
    return true;
  }

  // True when a read failed: the input ended there.
  [[nodiscard]] bool failed() const noexcept { return failed_; }

 protected:
  int_type underflow() override {
    if (gptr() < egptr()) return traits_type::to_int_type(*gptr());
    // The bytes read are wiped before the buffer is filled again (the whole buffer is
    // wiped when the import ends).
    wipe_bytes(eback(), static_cast<std::size_t>(egptr() - eback()));
    const std::size_t n = read_some(buf_, size_);
    setg(buf_, buf_, buf_ + n);
    return n == 0 ? traits_type::eof() : traits_type::to_int_type(*gptr());
  }

 private:
  // One read(2), retried on EINTR; 0 at the end of the input or after a failure. The
  // end is read once: a terminal's end-of-file is one Ctrl-D, not one per call.
  std::size_t read_some(char* at, std::size_t room) noexcept {
    if (failed_ || ended_ || room == 0) return 0;
    for (;;) {
      const ssize_t n = ::read(fd_, at, room);
      if (n == 0) ended_ = true;
      if (n >= 0) return static_cast<std::size_t>(n);
      if (errno != EINTR) {
        failed_ = true;
        return 0;
      }
    }
  }

  int fd_;
  bool owns_;
  char* buf_;
  std::size_t size_;
  bool failed_ = false;
  bool ended_ = false;
};

// import's --format, else the format the file's extension names.
apikeys::ImportFormat import_format(const Options& o) {
  if (!o.import_format.empty()) {
    if (o.import_format == "jsonl") return apikeys::ImportFormat::json_lines;
    if (o.import_format == "csv") return apikeys::ImportFormat::csv;
    throw UsageError("--format must be jsonl or csv");
  }
  // The name's extension as std::filesystem::path::extension() has it (none for ".",
  // ".." or a name that only starts with a dot), read in place: a path may hold a
  // secret, and std::filesystem's copies of it would be freed unwiped.
  const std::string_view path = o.import_file;
  const std::string_view name = path.substr(path.rfind('/') + 1);  // npos + 1 is 0
  const std::size_t dot = name == ".." ? std::string_view::npos : name.rfind('.');
  const std::string_view extension =
      dot == std::string_view::npos || dot == 0 ? std::string_view() : name.substr(dot);
  std::string lower;
  const WipeGuard lower_guard(lower);
  lower.reserve(extension.size());  // never grows: no copy left behind
  for (const char c : extension)
    lower.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
  if (lower == ".csv") return apikeys::ImportFormat::csv;
  if (lower == ".jsonl" || lower == ".ndjson" || lower == ".json")
    return apikeys::ImportFormat::json_lines;
  throw UsageError(
      "import: cannot tell the file's format from its name (.csv, .jsonl, .ndjson or .json): "
      "give --format jsonl or --format csv");
}

int cmd_import(const Options& o) {
  apikeys::ImportOptions options;
  options.format = import_format(o);
  if (o.legacy_pepper_file.empty()) {
    throw UsageError(
        "import needs --legacy-pepper-file FILE, the file holding the Python service's "
        "API_KEY_SECRET: its digests were made with it, and without it no imported key "
        "could be verified");
  }
  const apikeys::ChangeContext context = change_context(o);
  check_db(o, /*may_create_db=*/true);
  const bool from_stdin = o.import_file == "-";
  // The rows hold digests: they are read with read(2) into a buffer of ours, wiped at
  // the end (a stdio or filebuf buffer would keep them).
  std::string buffer(ImportInput::kBufferBytes, '\0');
  WipeGuard buffer_guard(buffer);
  int fd = STDIN_FILENO;
  if (!from_stdin) {
    // Opened before the database, so that a mistyped path creates no database.
    std::string path(o.import_file);  // NUL-terminated, and wiped: it may hold a secret
    const WipeGuard path_guard(path);
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) throw UsageError("import: cannot open the file to import");
  }
  ImportInput input(fd, /*owns=*/!from_stdin, buffer);
  if (!from_stdin && input.is_directory()) {
    throw UsageError("import: cannot open the file to import (it is a directory)");
  }
  // The peppers first: a missing, unreadable or weak one is reported without waiting
  // for the input.
  const Pepper pepper = load_pepper(o.pepper_file);
  std::shared_ptr<apikeys::HmacSha256Hasher> hasher = make_hasher(o, pepper);
  // The start of the input is read and checked (a CSV header) before the database is
  // opened: input refused as a whole creates no database and writes nothing.
  if (!input.check_start(options.format)) {
    std::cerr << "apikeys: import: reading the file failed before its first row: nothing "
                 "was imported\n";
    return kExitFailure;
  }
  std::istream in(&input);
  auto manager = open_manager(o, pepper, /*may_create_db=*/true, std::move(hasher));
  const apikeys::ImportReport report = manager->import_keys(in, options, context);
  Json out;
  out["imported"] = report.imported;
  out["skipped"] = report.skipped;
  out["rejected"] = report.rejected;
  out["rejections"] = Json::array();
  for (const apikeys::ImportRejection& r : report.rejections) {
    Json j;
    j["line"] = r.line;
    j["reason"] = r.reason;
    out["rejections"].push_back(std::move(j));
  }
  if (!emit(dump(out))) return kExitFailure;
  // A read error (an I/O error, standard input a directory) ended the input early.
  if (in.bad() || input.failed()) {
    std::cerr << "apikeys: import: reading the file failed before its end: the rows above were "
                 "read; run the import again to finish\n";
    return kExitFailure;
  }
  return manager.finish(report.rejected == 0 ? kExitOk : kExitSomeRejected);
}

// One audit event as `audit` prints it; before and after as they are stored.
Json audit_event_json(const apikeys::AuditEvent& e) {
  Json j;
  j["event_id"] = e.event_id.to_string();
  j["time"] = apikeys::format_utc(e.time);
  // A code this build does not know (written by a newer library) is shown as what it
  // is, "unknown:N", never as the name to_string() falls back to.
  const auto name = [](auto value, auto last, const char* known) {
    const auto code = static_cast<unsigned>(value);
    return code <= static_cast<unsigned>(last) ? std::string(known)
                                               : "unknown:" + std::to_string(code);
  };
  j["action"] = name(e.action, apikeys::kLastAuditAction, apikeys::to_string(e.action));
  Json actor;
  actor["type"] =
      name(e.context.actor.type, apikeys::kLastActorType, apikeys::to_string(e.context.actor.type));
  actor["id"] = e.context.actor.id;
  actor["detail"] = e.context.actor.detail;
  j["actor"] = std::move(actor);
  j["reason"] = e.context.reason;
  j["account_id"] = e.account_id.to_string();
  j["key_id"] = e.key_id.is_nil() ? Json(nullptr) : Json(e.key_id.to_string());
  j["before"] = embedded_object(e.before, "an audit event's before");
  j["after"] = embedded_object(e.after, "an audit event's after");
  return j;
}

// `audit`: one page of the account's audit events, newest first.
int cmd_audit(const Options& o) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  apikeys::AuditQuery query;
  if (o.given.key_id) query.key_id = parse_uuid(o.key_id, "--key-id");
  if (o.given.since) query.since = parse_time(o.since, "--since");
  if (o.given.limit) {
    query.limit = static_cast<std::size_t>(
        parse_number(o.limit, "--limit", 1, apikeys::AuditQuery::kMaxLimit));
  }
  query.cursor = std::string(o.cursor);
  const WipeGuard cursor_guard(query.cursor);  // a secret given as a cursor by mistake
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  const apikeys::AuditPage page = manager->audit(account, query);
  Json out;
  out["events"] = Json::array();
  for (const apikeys::AuditEvent& e : page.events) out["events"].push_back(audit_event_json(e));
  out["next_cursor"] = page.next_cursor ? Json(*page.next_cursor) : Json(nullptr);
  return emit(dump(out)) ? kExitOk : kExitFailure;
}

// `audit-prune`: deletes the audit events of every account older than --before.
int cmd_audit_prune(const Options& o) {
  const apikeys::TimePoint before = parse_time(o.before, "--before");
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  Json out;
  out["deleted"] = manager->prune_audit(before);
  return emit(dump(out)) ? kExitOk : kExitFailure;
}

// What a pepper id is to this run: the pepper new digests are made with, the legacy
// pepper, another pepper the hasher knows, or one it does not know.
const char* pepper_role(std::uint32_t id, const apikeys::Hasher& hasher) {
  if (id == hasher.current_pepper_id()) return "current";
  const std::vector<std::uint32_t> known = hasher.pepper_ids();
  // Keys under a pepper this run was not given cannot be verified by it: "unknown",
  // the legacy id included when no --legacy-pepper-file was given.
  if (std::find(known.begin(), known.end(), id) == known.end()) return "unknown";
  return id == apikeys::kLegacyPepperId ? "legacy" : "retired";
}

int cmd_peppers(const Options& o) {
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  std::vector<apikeys::PepperCount> counts = manager->pepper_counts();
  // The peppers this run knows are listed even when no key is left under them.
  for (const std::uint32_t id : manager.hasher->pepper_ids()) {
    const bool listed =
        std::any_of(counts.begin(), counts.end(),
                    [id](const apikeys::PepperCount& c) { return c.pepper_id == id; });
    if (!listed) counts.push_back({id, 0});
  }
  std::sort(counts.begin(), counts.end(),
            [](const apikeys::PepperCount& a, const apikeys::PepperCount& b) {
              return a.pepper_id < b.pepper_id;
            });
  Json out = Json::array();
  for (const apikeys::PepperCount& c : counts) {
    Json j;
    j["pepper_id"] = c.pepper_id;
    j["keys"] = c.keys;
    j["role"] = pepper_role(c.pepper_id, *manager.hasher);
    out.push_back(std::move(j));
  }
  return emit(dump(out)) ? kExitOk : kExitFailure;
}

// A path as `scan` prints it: printable ASCII as it is, and every other byte, and the
// backslash, as \xNN (detail::escape_unprintable()). A control byte printed raw could
// rewrite the terminal or forge a line of output, and a byte that is not ASCII may be
// part of something pasted in the wrong place (git, by default, also escapes such paths).
std::string shown_path(std::string_view path) { return apikeys::detail::escape_unprintable(path); }

// `scan`'s walk over its paths: what it found, and whether a path could not be read.
// A path is shown as given, and the files below a directory as that path joined with
// their names, through shown_path(); a path given that may be a secret pasted in the
// wrong place is shown as "<not shown>".
class Scan {
 public:
  // Scans "-" (stdin), a file, or a directory and everything below it, without .git.
  // Paths are handled as strings of ours, wiped when done, and through POSIX calls:
  // a path, or a name found below one, may hold a secret (a file named after a key),
  // and std::filesystem's copies of a path are freed unwiped.
  void argument(std::string_view given) {
    const std::string shown =
        may_hold_secret(given) ? std::string("<not shown>") : shown_path(given);
    if (given == "-") {
      stream(STDIN_FILENO, shown);
      return;
    }
    std::string path(given);
    const WipeGuard path_guard(path);
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      fail(shown, std::strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
      directory(path, shown);
    } else {
      file(path, shown);
    }
  }

  [[nodiscard]] int exit_code() const noexcept {
    if (failed_) return kExitUsage;
    return found_ ? kExitFound : kExitOk;
  }

 private:
  // `dir` and `name` joined with one slash, in a string that never reallocates.
  static std::string joined(std::string_view dir, std::string_view name) {
    const bool slash = !dir.empty() && dir.back() != '/';
    std::string out;
    out.reserve(dir.size() + (slash ? 1 : 0) + name.size());
    out.append(dir);
    if (slash) out.push_back('/');
    out.append(name);
    return out;
  }

  void directory(const std::string& dir, const std::string& shown) {
    std::vector<std::string> names;
    const auto wipe_names = [&names] {
      for (std::string& n : names) wipe(n);
    };
    // getdents64() into a buffer of ours, wiped after: readdir()'s buffer, which holds
    // the names, would be freed by closedir() as it is.
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      fail(shown, std::strerror(errno));
      return;
    }
    int error = 0;
    {
      // Wiped and freed before the walk goes deeper: one buffer at a time, not one per
      // level.
      std::vector<char> buffer(32768);  // operator new's alignment suits dirent64
      try {
        for (;;) {
          const ssize_t n = ::getdents64(fd, buffer.data(), buffer.size());
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) {
            if (n < 0) error = errno;
            break;
          }
          for (ssize_t at = 0; at < n;) {
            const auto* e = reinterpret_cast<const dirent64*>(buffer.data() + at);
            const std::string_view name(e->d_name);
            if (name != "." && name != "..") names.emplace_back(name);
            at += e->d_reclen;
          }
        }
      } catch (...) {
        ::close(fd);
        wipe_bytes(buffer.data(), buffer.size());
        wipe_names();
        throw;
      }
      ::close(fd);
      wipe_bytes(buffer.data(), buffer.size());
    }
    if (error != 0) fail(shown, std::strerror(error));
    try {
      std::sort(names.begin(), names.end());  // the same order on every run
      for (const std::string& name : names) {
        if (!std::cout) break;         // nobody reads the findings any more
        if (name == ".git") continue;  // a repository's own store (or a worktree's link to it)
        std::string entry = joined(dir, name);
        const WipeGuard entry_guard(entry);
        // A name found here is shown, unless it holds a secret key (a file named after
        // one): never more of a secret than a finding shows.
        const std::string shown_entry =
            joined(shown, holds_secret_key(name) ? std::string("<not shown>") : shown_path(name));
        struct stat link {};
        if (::lstat(entry.c_str(), &link) != 0) {
          fail(shown_entry, std::strerror(errno));
          continue;
        }
        if (S_ISDIR(link.st_mode)) {
          directory(entry, shown_entry);
          continue;
        }
        // A link is followed to a file, never to a directory (which may loop).
        struct stat target = link;
        if (S_ISLNK(link.st_mode) && ::stat(entry.c_str(), &target) != 0) continue;
        if (S_ISREG(target.st_mode)) file(entry, shown_entry);
      }
    } catch (...) {
      wipe_names();
      throw;
    }
    wipe_names();
  }

  void file(const std::string& path, const std::string& shown) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
      fail(shown, std::strerror(errno));
      return;
    }
    stream(fd, shown);
    ::close(fd);
  }

  void stream(int fd, const std::string& shown) {
    const bool ok = scan_fd(fd, kScanChunk, [&](const ScanFinding& f) {
      found_ = true;
      std::cout << shown << ':' << f.line << ": " << (f.legacy ? "legacy" : "branded") << ' '
                << (f.secret ? "secret" : "public") << " key " << f.shown << '\n';
    });
    if (!ok) fail(shown, "read error");
  }

  void fail(const std::string& shown, const std::string& why) {
    failed_ = true;
    std::cout.flush();  // the keys found so far come first
    std::cerr << "apikeys: scan: cannot read " << shown << ": " << why << '\n';
  }

  bool found_ = false;
  bool failed_ = false;
};

// Needs neither database nor pepper, and reads neither.
int cmd_scan(const Options& o) {
  Scan scan;
  for (const std::string_view path : o.scan_paths) {
    if (!std::cout) break;  // nobody reads the findings any more (a closed pipe)
    scan.argument(path);
  }
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "apikeys: scan: cannot write to stdout\n";
    return kExitFailure;
  }
  return scan.exit_code();
}

int exit_code_for(apikeys::ErrorCode code) noexcept {
  switch (code) {
    case apikeys::ErrorCode::invalid_argument: return kExitUsage;
    case apikeys::ErrorCode::not_found: return kExitNotFound;
    case apikeys::ErrorCode::conflict: return kExitConflict;
    case apikeys::ErrorCode::already_exists:
    case apikeys::ErrorCode::busy:
    case apikeys::ErrorCode::storage:
    case apikeys::ErrorCode::crypto:
    case apikeys::ErrorCode::not_supported: return kExitFailure;
  }
  return kExitFailure;
}

// The password of a postgresql:// URL (user:PASSWORD@ in its authority, or a
// password= parameter), or "" when it has none: hidden from messages, as the whole
// URL is.
std::string_view url_password(std::string_view db) noexcept {
  if (!is_postgres_url(db)) return {};
  const std::string_view rest = db.substr(db.find("://") + 3);
  const std::string_view authority = rest.substr(0, rest.find_first_of("/?"));
  const auto at = authority.rfind('@');
  if (at != std::string_view::npos) {
    const std::string_view userinfo = authority.substr(0, at);
    const auto colon = userinfo.find(':');
    if (colon != std::string_view::npos) return userinfo.substr(colon + 1);
  }
  const auto p = db.find("password=");
  if (p == std::string_view::npos) return {};
  const std::string_view value = db.substr(p + 9);
  return value.substr(0, value.find('&'));
}

// `message` without the --db password, if any (the CommandLine hides the whole URL).
std::string redact_password(std::string message, std::string_view password) {
  if (password.size() < 4) return message;  // too short to find without false hits
  for (auto at = message.find(password); at != std::string::npos;
       at = message.find(password, at + 11)) {
    message.replace(at, password.size(), "<not shown>");
  }
  return message;
}

}  // namespace

int run_command(int argc, char** argv) {
  // First of all: take every argument that may be a secret out of argv and out of the
  // parser's sight.
  CommandLine cmd(argc, argv);
  Parsed p;

  CLI::App app{
      "Issue, list, change, rotate, revoke, delete and verify API keys stored in a SQLite\n"
      "file or a PostgreSQL database, with their rate limits and credits; import keys from\n"
      "the Python service; read and prune the audit trail of every change (audit,\n"
      "audit-prune); find leaked keys in files (scan). The pepper (HMAC key, at\n"
      "least 64 hex characters) comes from the APIKEYS_PEPPER environment variable or\n"
      "--pepper-file; scan needs neither it nor --db. Exit codes: 0 success, 1 key rejected\n"
      "(verify) or found (scan), 2 usage, 3 no such key, 4 storage or internal failure,\n"
      "5 conflict, 6 rows rejected (import).",
      "apikeys"};
  app.set_version_flag("--version", std::string(apikeys::version()),
                       "Print the library version and exit");
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the command
  // Required by every command but scan (checked below).
  app.add_option("--db", p.db,
                 "SQLite database file (created by `create` and `import` if missing), or "
                 "a postgresql:// URL; required except by scan")
      ->option_text("PATH|URL");
  app.add_option("--pepper-file", p.pepper_file,
                 "File holding the hex pepper (overrides APIKEYS_PEPPER)")
      ->option_text("FILE");
  app.add_option("--legacy-pepper-file", p.legacy_pepper_file,
                 "File holding the Python service's API_KEY_SECRET (raw bytes; one final "
                 "line break dropped): its keys verify, and move to the pepper when used")
      ->option_text("FILE");
  app.add_option("--brand", p.brand,
                 "Issue branded keys, NAME_pk_/NAME_sk_ with a checksum (2-16 of [a-z0-9]; "
                 "default: APIKEYS_BRAND); pk_/sk_ keys still verify")
      ->option_text("NAME");
  app.add_option("--pg-schema", p.pg_schema,
                 "PostgreSQL schema holding the tables (default: public)")
      ->option_text("NAME");
  CLI::Option* redis = app.add_option("--redis", p.redis,
                                      "Erase each changed key from this shared Redis cache "
                                      "before returning")
                           ->option_text("HOST:PORT");
  app.add_option("--redis-prefix", p.redis_prefix,
                 "Prefix of the shared cache's Redis keys (default: apikeys:)")
      ->option_text("PREFIX")
      ->needs(redis);
  // Any argument may be a secret pasted in the wrong place, and CLI11 quotes values in
  // its messages ("Could not convert: --expires-in-days = sk_..."): never echo them.
  app.failure_message([&cmd](const CLI::App*, const CLI::Error& e) {
    // CLI11 names the error after the (sub)command, so test its exit code, not its name.
    const bool extras = e.get_exit_code() == static_cast<int>(CLI::ExitCodes::ExtrasError);
    std::string message =
        extras ? std::string("unexpected extra arguments (not shown: they may be secrets)")
               : redact_arguments(e.what(), cmd.argc(), cmd.argv());
    // CLI11 quotes a value too short to be taken for a secret: it may still hold an
    // escape sequence or a newline (detail::escape_controls()).
    return "apikeys: " + apikeys::detail::escape_controls(message) +
           "\nRun with --help for more information.\n";
  });

  // The rate-limit and credit options of create and update.
  struct AdmissionOptions {
    CLI::Option* rate_limits = nullptr;
    CLI::Option* credits = nullptr;
    CLI::Option* refill_amount = nullptr;
    CLI::Option* refill_interval = nullptr;
    CLI::Option* refill_mode = nullptr;
    CLI::Option* refill_cap = nullptr;
  };
  const auto add_admission = [&p](CLI::App* command, bool update) {
    AdmissionOptions a;
    a.rate_limits =
        command
            ->add_option("--rate-limit", p.rate_limits,
                         update ? "The key's rate limits from now on (repeat; replaces them all)"
                                : "A rate limit, e.g. per-minute=100/1m or burst=10/1s:20 "
                                  "(PERIOD 1s-1d in s, m, h or d; repeat for more)")
            ->option_text("NAME=LIMIT/PERIOD[:BURST]")
            ->allow_extra_args(false);
    a.credits = command
                    ->add_option("--credits", p.credits,
                                 update ? "Set the balance to N (0 to 2^53), adding credits "
                                          "to a key without"
                                        : "Start with N credits (0 to 2^53); each request "
                                          "spends its cost")
                    ->option_text("N");
    a.refill_amount =
        command->add_option("--refill-amount", p.refill_amount, "Refill N credits (1 to 2^53)")
            ->option_text("N");
    a.refill_interval = command
                            ->add_option("--refill-interval", p.refill_interval,
                                         "At each UTC day or month (with --refill-amount)")
                            ->option_text("daily|monthly");
    a.refill_mode = command
                        ->add_option("--refill-mode", p.refill_mode,
                                     "reset: the balance becomes N (default); add: N is added, "
                                     "up to the cap")
                        ->option_text("reset|add");
    a.refill_cap =
        command
            ->add_option("--refill-cap", p.refill_cap,
                         "With --refill-mode add: the most a refill brings the balance to "
                         "(default: the amount)")
            ->option_text("N");
    if (update) {
      CLI::Option* clear =
          command->add_flag("--clear-rate-limits", p.clear_rate_limits, "Remove every rate limit");
      a.rate_limits->excludes(clear);
      CLI::Option* no_credits = command->add_flag(
          "--no-credits", p.no_credits, "Remove the credits (and refill): no usage limit");
      a.credits->excludes(no_credits);
      CLI::Option* no_refill =
          command->add_flag("--no-refill", p.no_refill, "Stop refilling the credits");
      for (CLI::Option* o : {a.refill_amount, a.refill_interval, a.refill_mode, a.refill_cap})
        o->excludes(no_refill);
    }
    return a;
  };
  const auto add_account = [&p](CLI::App* command) {
    command->add_option("--account", p.account, "Account UUID")->option_text("UUID")->required();
  };
  const auto add_key_id = [&p](CLI::App* command) {
    command->add_option("--key-id", p.key_id, "Key UUID (from create or list)")
        ->option_text("UUID")
        ->required();
  };
  // Who makes a change, and why: on every command that changes keys. The --actor options,
  // to tell `--actor ""` (refused) from no --actor (the user running the command).
  std::vector<CLI::Option*> actor_options;
  const auto add_change_context = [&p, &actor_options](CLI::App* command) {
    actor_options.push_back(
        command
            ->add_option("--actor", p.actor,
                         "Who makes the change, for the audit trail: TYPE is user, service or "
                         "system (default: user:LOGIN, the user running the command)")
            ->option_text("TYPE:ID"));
    command
        ->add_option("--reason", p.reason,
                     "Why, for the audit trail (up to 1024 bytes; no control characters)")
        ->option_text("TEXT");
  };
  // Each --scope takes one value; repeat it for more.
  const auto add_scopes = [&p](CLI::App* command, const char* help) {
    return command->add_option("--scope", p.scopes, help)
        ->option_text("SCOPE")
        ->allow_extra_args(false);
  };

  CLI::App* create = app.add_subcommand(
      "create", "Create a key and print it with its secret (shown only this once)");
  add_account(create);
  CLI::Option* create_title =
      create
          ->add_option("--title", p.title,
                       "1-255 characters; no control, bidi or zero-width characters")
          ->option_text("TEXT")
          ->required();
  CLI::Option* create_description =
      create->add_option("--description", p.description, "Optional, up to 1024 characters")
          ->option_text("TEXT");
  CLI::Option* create_expires = create
                                    ->add_option("--expires-in-days", p.expires_in_days,
                                                 "Lifetime, 1-365 days (default: never expires)")
                                    ->option_text("N");
  CLI::Option* create_metadata =
      create
          ->add_option("--metadata", p.metadata,
                       "A JSON object, up to 4096 bytes, shown with the key and to validators")
          ->option_text("JSON");
  CLI::Option* create_scopes =
      add_scopes(create, "A scope the key grants (repeat for more), e.g. invoices:read");
  const AdmissionOptions create_admission = add_admission(create, /*update=*/false);
  add_change_context(create);

  CLI::App* list =
      app.add_subcommand("list", "List an account's keys, newest first (never secrets)");
  add_account(list);
  CLI::Option* list_limit =
      list->add_option("--limit", p.limit, "Print one page of at most N keys (1-1000)")
          ->option_text("N");
  CLI::Option* list_cursor =
      list->add_option("--cursor", p.cursor, "Print the page after this next_cursor")
          ->option_text("CURSOR");
  CLI::Option* list_status = list->add_option("--status", p.status, "Only keys with this status")
                                 ->option_text("active|disabled|revoked");

  CLI::App* get = app.add_subcommand("get", "Print one key (never its secret)");
  add_account(get);
  add_key_id(get);

  CLI::App* update = app.add_subcommand("update", "Change a key's fields and print it");
  add_account(update);
  add_key_id(update);
  CLI::Option* update_title =
      update->add_option("--title", p.title, "New title (same rules as create)")
          ->option_text("TEXT");
  CLI::Option* update_description =
      update->add_option("--description", p.description, "New description (\"\" clears it)")
          ->option_text("TEXT");
  CLI::Option* update_metadata =
      update->add_option("--metadata", p.metadata, "New metadata: a JSON object")
          ->option_text("JSON");
  CLI::Option* clear_metadata =
      update->add_flag("--clear-metadata", p.clear_metadata, "Remove the metadata");
  update_metadata->excludes(clear_metadata);
  CLI::Option* update_scopes =
      add_scopes(update, "The scopes the key grants from now on (repeat; replaces the set)");
  CLI::Option* clear_scopes =
      update->add_flag("--clear-scopes", p.clear_scopes, "Remove every scope");
  update_scopes->excludes(clear_scopes);
  CLI::Option* update_expires =
      update->add_option("--expires-in-days", p.expires_in_days, "Expire N days from now (1-365)")
          ->option_text("N");
  CLI::Option* no_expiry = update->add_flag("--no-expiry", p.no_expiry, "Never expire");
  update_expires->excludes(no_expiry);
  const AdmissionOptions update_admission = add_admission(update, /*update=*/true);
  CLI::Option* expected_version =
      update
          ->add_option("--expected-version", p.expected_version,
                       "Change the key only if its version is still V (else exit 5)")
          ->option_text("V");
  add_change_context(update);

  CLI::App* disable =
      app.add_subcommand("disable", "Switch a key off until `enable` (prints the key)");
  add_account(disable);
  add_key_id(disable);
  add_change_context(disable);

  CLI::App* enable = app.add_subcommand("enable", "Switch a disabled key back on (prints the key)");
  add_account(enable);
  add_key_id(enable);
  add_change_context(enable);

  CLI::App* rotate = app.add_subcommand(
      "rotate", "Replace a key with a new one (secret shown once); the old one expires");
  add_account(rotate);
  add_key_id(rotate);
  CLI::Option* grace = rotate
                           ->add_option("--grace-seconds", p.grace_seconds,
                                        "How long the old key keeps working, 0-604800 (default: 0)")
                           ->option_text("N");
  add_change_context(rotate);

  CLI::App* revoke = app.add_subcommand("revoke", "Revoke a key: it is rejected from then on");
  add_account(revoke);
  add_key_id(revoke);
  add_change_context(revoke);

  CLI::App* revoke_all =
      app.add_subcommand("revoke-all", "Revoke every key of an account; prints how many");
  add_account(revoke_all);
  add_change_context(revoke_all);

  CLI::App* remove = app.add_subcommand("delete", "Delete a key permanently");
  add_account(remove);
  add_key_id(remove);
  add_change_context(remove);

  CLI::App* verify = app.add_subcommand(
      "verify",
      "Check a key: `verify PUBLIC SECRET`, `verify PUBLIC:SECRET`, or `verify -` (token on stdin)");
  verify
      ->add_option("key", p.first,
                   "Public key, pk_...:sk_... token, or - to read the token from stdin")
      ->required();
  verify->add_option("secret", p.second, "Secret key, when the public key is given alone");
  CLI::Option* verify_scopes = add_scopes(verify, "A scope the key must grant (repeat for more)");
  CLI::Option* verify_cost =
      verify
          ->add_option("--cost", p.cost,
                       "What the request costs: credits spent and rate-limit requests counted "
                       "(default 1; 0 checks without spending)")
          ->option_text("N");

  CLI::App* credits = app.add_subcommand(
      "credits", "Set or change the credit balance of a key's lineage (prints the key)");
  add_account(credits);
  add_key_id(credits);
  CLI::Option* credits_set =
      credits->add_option("--set", p.credits_set, "Set the balance to N (0 to 2^53)")
          ->option_text("N");
  CLI::Option* credits_add =
      credits
          ->add_option("--add", p.credits_add,
                       "Add N (negative: take away); the balance stays within 0 to 2^53")
          ->option_text("N");
  credits_set->excludes(credits_add);
  add_change_context(credits);

  CLI::App* import_keys =
      app.add_subcommand("import",
                         "Import keys exported from the Python service (JSON lines or CSV); needs "
                         "--legacy-pepper-file; prints a report (exit 6 if rows were rejected)");
  import_keys
      ->add_option("file", p.import_file,
                   "The export: .jsonl, .ndjson or .json (JSON lines), .csv, or - for stdin")
      ->required();
  import_keys
      ->add_option("--format", p.import_format, "The export's format (default: by its extension)")
      ->option_text("jsonl|csv");
  add_change_context(import_keys);

  CLI::App* audit = app.add_subcommand(
      "audit", "Print an account's audit events, newest first, one page at a time");
  add_account(audit);
  CLI::Option* audit_key_id =
      audit->add_option("--key-id", p.key_id, "Only this key's events")->option_text("UUID");
  CLI::Option* audit_since =
      audit->add_option("--since", p.since, "Only events at or after this RFC 3339 time")
          ->option_text("TIME");
  CLI::Option* audit_limit =
      audit->add_option("--limit", p.limit, "At most N events (1-1000, default 100)")
          ->option_text("N");
  CLI::Option* audit_cursor =
      audit->add_option("--cursor", p.cursor, "Print the page after this next_cursor")
          ->option_text("CURSOR");

  CLI::App* audit_prune = app.add_subcommand(
      "audit-prune", "Delete the audit events of every account older than a time; prints how many");
  audit_prune
      ->add_option("--before", p.before,
                   "Delete the events before this RFC 3339 time, e.g. 2026-01-01T00:00:00Z")
      ->option_text("TIME")
      ->required();

  CLI::App* peppers = app.add_subcommand(
      "peppers", "Count the keys under each pepper id, with its role (current, legacy, ...)");

  CLI::App* scan = app.add_subcommand(
      "scan",
      "Find API keys in files, directories (recursively, skipping .git) or - (stdin); "
      "prints PATH:LINE per key, exit 1 if any (no --db or pepper needed)");
  scan->add_option("path", p.scan_paths, "Files, directories, or - for stdin")->required();

  try {
    app.parse(cmd.argc(), cmd.argv());
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help, version or the error message
    return rc == 0 ? kExitOk : kExitUsage;
  }
  cmd.blank(p.first);
  cmd.blank(p.second);

  Given given;
  given.title = create_title->count() > 0 || update_title->count() > 0;
  given.description = create_description->count() > 0 || update_description->count() > 0;
  given.metadata = create_metadata->count() > 0 || update_metadata->count() > 0;
  given.scopes =
      create_scopes->count() > 0 || update_scopes->count() > 0 || verify_scopes->count() > 0;
  given.expires_in_days = create_expires->count() > 0 || update_expires->count() > 0;
  given.expected_version = expected_version->count() > 0;
  given.grace_seconds = grace->count() > 0;
  given.limit = list_limit->count() > 0 || audit_limit->count() > 0;
  given.cursor = list_cursor->count() > 0 || audit_cursor->count() > 0;
  given.key_id = audit_key_id->count() > 0;
  given.since = audit_since->count() > 0;
  given.status = list_status->count() > 0;
  const auto given_in = [](const AdmissionOptions& a, const AdmissionOptions& b,
                           CLI::Option* AdmissionOptions::*o) {
    return (a.*o)->count() > 0 || (b.*o)->count() > 0;
  };
  given.rate_limits = given_in(create_admission, update_admission, &AdmissionOptions::rate_limits);
  given.credits = given_in(create_admission, update_admission, &AdmissionOptions::credits);
  given.refill_amount =
      given_in(create_admission, update_admission, &AdmissionOptions::refill_amount);
  given.refill_interval =
      given_in(create_admission, update_admission, &AdmissionOptions::refill_interval);
  given.refill_mode = given_in(create_admission, update_admission, &AdmissionOptions::refill_mode);
  given.refill_cap = given_in(create_admission, update_admission, &AdmissionOptions::refill_cap);
  given.credits_set = credits_set->count() > 0;
  given.credits_add = credits_add->count() > 0;
  given.cost = verify_cost->count() > 0;
  given.actor = std::any_of(actor_options.begin(), actor_options.end(),
                            [](const CLI::Option* a) { return a->count() > 0; });
  Options o(p, given, cmd);
  const std::string_view db_password = url_password(o.db);

  try {
    // scan reads no database, pepper or brand: a bad one cannot stop it.
    if (*scan) return cmd_scan(o);
    if (o.db.empty()) throw UsageError("--db is required: a SQLite file or a postgresql:// URL");
    refuse_pepper_early(o);
    const char* env_brand = std::getenv("APIKEYS_BRAND");
    o.format = !o.brand.empty()       ? brand_format(o.brand, "--brand")
               : env_brand != nullptr ? brand_format(env_brand, "APIKEYS_BRAND")
                                      : std::nullopt;
    // Drawn before any command runs: a CSPRNG failure then stops it before it writes.
    (void)marker_nonce();
    if (*create) return cmd_create(o);
    if (*list) return cmd_list(o);
    if (*get) return cmd_key(o, KeyCommand::get);
    if (*update) return cmd_key(o, KeyCommand::update);
    if (*disable) return cmd_key(o, KeyCommand::disable);
    if (*enable) return cmd_key(o, KeyCommand::enable);
    if (*rotate) return cmd_rotate(o);
    if (*revoke) return cmd_key(o, KeyCommand::revoke);
    if (*revoke_all) return cmd_revoke_all(o);
    if (*remove) return cmd_delete(o);
    if (*verify) return cmd_verify(o);
    if (*credits) return cmd_credits(o);
    if (*import_keys) return cmd_import(o);
    if (*audit) return cmd_audit(o);
    if (*audit_prune) return cmd_audit_prune(o);
    if (*peppers) return cmd_peppers(o);
    std::cerr << "apikeys: no command given\n";
    return kExitUsage;
  } catch (const UsageError& e) {
    // Every message reaches the terminal as printable ASCII, whatever text it quotes;
    // and, like every other message, without a value that may be a secret (usage
    // messages name options, not values, but one added later must not leak one).
    std::cerr << "apikeys: "
              << apikeys::detail::escape_controls(
                     redact_password(cmd.redact(e.what()), db_password))
              << '\n';
    return kExitUsage;
  } catch (const apikeys::Error& e) {
    std::cerr << "apikeys: " << apikeys::to_string(e.code()) << ": "
              << apikeys::detail::escape_controls(
                     redact_password(cmd.redact(e.what()), db_password))
              << '\n';
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    std::cerr << "apikeys: internal error: "
              << apikeys::detail::escape_controls(
                     redact_password(cmd.redact(e.what()), db_password))
              << '\n';
    return kExitFailure;
  }
}

int run(int argc, char** argv) noexcept {
  disable_core_dumps();
  // A write to a pipe nobody reads (`apikeys create | head -c0`) fails with EPIPE, which
  // the commands report (a stored key whose secret was not shown is named, exit 4),
  // rather than killing the process after the change was saved and before it was told.
  std::signal(SIGPIPE, SIG_IGN);
  // Every object (the KeyManager and its Validator included) is destroyed inside
  // run_command(), so pending last-use updates are flushed before the process exits.
  try {
    return run_command(argc, argv);
  } catch (...) {
    std::cerr << "apikeys: internal error\n";
    return kExitFailure;
  }
}

}  // namespace apikeys::cli
