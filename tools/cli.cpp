// The apikeys command-line tool; see cli.hpp.

#include "cli.hpp"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "../src/hex.hpp"
#include "apikeys/apikeys.hpp"

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

// True when `text` contains `hex_lower` (lower-case hex), in any letter case.
bool contains_hex(std::string_view text, std::string_view hex_lower) noexcept {
  if (hex_lower.empty() || text.size() < hex_lower.size()) return false;
  for (std::size_t at = 0; at + hex_lower.size() <= text.size(); ++at) {
    std::size_t i = 0;
    while (i < hex_lower.size()) {
      const char c = text[at + i];
      const char lower = (c >= 'A' && c <= 'F') ? static_cast<char>(c - 'A' + 'a') : c;
      if (lower != hex_lower[i]) break;
      ++i;
    }
    if (i == hex_lower.size()) return true;
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
  for (auto at = text.find(kSecretPrefix); at != std::string_view::npos;
       at = text.find(kSecretPrefix, at + 1)) {
    const std::string_view body = text.substr(at + kSecretPrefix.size(), kSecretBodyChars);
    if (body.size() == kSecretBodyChars && std::all_of(body.begin(), body.end(), is_base62))
      return true;
  }
  return false;
}

bool may_hold_secret(std::string_view text) noexcept {
  if (text.find(kSecretPrefix) != std::string_view::npos) return true;
  if (text.find(kNotShown) != std::string_view::npos) return true;
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
  for (std::size_t i = 0; i < n; ++i) {
    const std::string_view arg(argv[i]);
    if (i == 0 || !may_hold_secret(arg)) {
      view_.emplace_back(arg);
      continue;
    }
    const std::size_t keep = kept_prefix(arg);
    hidden_.emplace_back(arg.substr(keep));
    wipe_bytes(argv[i] + keep, arg.size() - keep);
    view_.push_back(std::string(arg.substr(0, keep)) + std::string(kPlaceholderStart) +
                    std::to_string(hidden_.size() - 1) + ">");
  }
  for (const std::string& s : view_) pointers_.push_back(s.c_str());
  pointers_.push_back(nullptr);
}

std::string_view CommandLine::resolve(const std::string& parsed) const noexcept {
  const std::string_view p(parsed);
  if (p.size() <= kPlaceholderStart.size() + 1 ||
      p.substr(0, kPlaceholderStart.size()) != kPlaceholderStart || p.back() != '>') {
    return p;
  }
  std::size_t index = 0;
  for (const char c : p.substr(kPlaceholderStart.size(), p.size() - kPlaceholderStart.size() - 1)) {
    if (c < '0' || c > '9' || index > hidden_.size()) return p;
    index = index * 10 + static_cast<std::size_t>(c - '0');
  }
  return index < hidden_.size() ? hidden_[index].reveal() : p;
}

void CommandLine::blank(const std::string& parsed) noexcept {
  if (parsed.empty() || parsed == "-") return;
  for (std::size_t i = 1; i < view_.size(); ++i) {
    if (view_[i] == parsed) wipe_bytes(argv_[i], std::strlen(argv_[i]));
  }
}

std::string CommandLine::redact(std::string message) const {
  constexpr std::string_view kMarker = "<not shown>";
  for (const apikeys::SecretString& h : hidden_) {
    const std::string_view value = h.reveal();
    if (value.size() < 8) continue;
    // Resume after the marker, which may itself hold the value ("<not shown>").
    for (auto at = message.find(value); at != std::string::npos;
         at = message.find(value, at + kMarker.size())) {
      message.replace(at, value.size(), kMarker);
    }
  }
  return message;
}

std::size_t CommandLine::kept_prefix(std::string_view arg) noexcept {
  if (arg.size() < 2 || arg[0] != '-') return 0;
  const auto eq = arg.find('=');
  if (eq != std::string_view::npos) return eq + 1;
  return arg[1] == '-' ? 2 : 1;
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

// Reads the pepper from `pepper_file`, or else from APIKEYS_PEPPER. The file's path is
// never shown: it may be the pepper itself, pasted in the wrong place.
Pepper load_pepper(std::string_view pepper_file) {
  if (!pepper_file.empty()) {
    std::string path(pepper_file);  // exactly sized (no reallocation); wiped
    WipeGuard path_guard(path);
    std::ifstream in;
    in.rdbuf()->pubsetbuf(nullptr, 0);  // unbuffered: no stray copy in a stream buffer
    in.open(path, std::ios::in | std::ios::binary);
    if (!in)
      throw UsageError("cannot read the file given to --pepper-file (its path is not shown)");
    // Read into a buffer sized up front (pipes have no size, so read one byte more than
    // allowed to detect an oversized file) and shrink it, which never reallocates.
    std::string content(kMaxPepperFileBytes + 1, '\0');
    WipeGuard guard(content);
    in.read(content.data(), static_cast<std::streamsize>(content.size()));
    if (in.bad())
      throw UsageError("cannot read the file given to --pepper-file (its path is not shown)");
    const auto n = static_cast<std::size_t>(in.gcount());
    if (n > kMaxPepperFileBytes) throw UsageError("--pepper-file is larger than 4096 bytes");
    content.resize(n);
    return make_pepper(decode_pepper(content, "--pepper-file"));
  }
  const char* env = std::getenv("APIKEYS_PEPPER");
  if (env == nullptr || *env == '\0') {
    throw UsageError(
        "no pepper: set APIKEYS_PEPPER to at least 64 hex characters (32 bytes, e.g. from "
        "`openssl rand -hex 32`) or pass --pepper-file FILE");
  }
  return make_pepper(decode_pepper(env, "APIKEYS_PEPPER"));
}

// Refuses a value that holds a secret key or the pepper where neither belongs: it would
// be kept in plain text (a title or description in the database and in `list`'s output,
// a database file's name in every directory listing). Checked before any copy is made.
void refuse_secret(std::string_view value, const char* option, std::string_view pepper_hex) {
  if (holds_secret_key(value) || contains_hex(value, pepper_hex)) {
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

Json time_or_null(const std::optional<apikeys::TimePoint>& t) {
  return t ? Json(apikeys::format_utc(*t)) : Json(nullptr);
}

// Replaces invalid UTF-8 instead of throwing; the library already rejects it on create.
std::string dump(const Json& j) { return j.dump(2, ' ', false, Json::error_handler_t::replace); }

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

// Prints `json` (dump() of an object whose "secret_key" is "") with `secret` written
// into that field. The secret never enters a JSON value or a string that grows: the
// output is assembled once, in a buffer sized up front, and wiped after the write.
bool emit_with_secret(const std::string& json, std::string_view secret) {
  static constexpr std::string_view kField =
      "\n  \"secret_key\": \"\"";  // unique: quotes in values are escaped
  const auto at = json.find(kField);
  const bool plain =
      std::all_of(secret.begin(), secret.end(), [](char c) { return is_base62(c) || c == '_'; });
  if (at == std::string::npos || !plain)
    throw std::logic_error("create: cannot place the secret in the output");
  const std::size_t split = at + kField.size() - 1;  // before the closing quote
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
// a placeholder (see CommandLine).
struct Parsed {
  std::string db;
  std::string pepper_file;
  std::string account;
  std::string key_id;
  std::string title;
  std::string description;
  int expires_in_days = 0;
  std::string first;   // verify: PUBLIC, or TOKEN, or "-" for a token on stdin
  std::string second;  // verify: SECRET
};

// What the commands use: Parsed with each placeholder replaced by its real value. Views
// into the Parsed and the CommandLine, which outlive them.
struct Options {
  Options(const Parsed& p, const CommandLine& cmd) noexcept
      : db(cmd.resolve(p.db)),
        pepper_file(cmd.resolve(p.pepper_file)),
        account(cmd.resolve(p.account)),
        key_id(cmd.resolve(p.key_id)),
        title(cmd.resolve(p.title)),
        description(cmd.resolve(p.description)),
        expires_in_days(p.expires_in_days),
        first(cmd.resolve(p.first)),
        second(cmd.resolve(p.second)) {}

  std::string_view db;
  std::string_view pepper_file;
  std::string_view account;
  std::string_view key_id;
  std::string_view title;
  std::string_view description;
  int expires_in_days;
  std::string_view first;
  std::string_view second;
};

// Refuses a --db that holds a secret key (before any copy of it is made) and, unless the
// command may create it, one where no file exists. The path is never shown: it may be a
// secret pasted in the wrong place.
void check_db(const Options& o, bool may_create_db) {
  refuse_secret(o.db, "--db", {});
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

// `may_create_db`: only `create` initialises an empty file, as it alone makes a missing one.
std::unique_ptr<apikeys::KeyManager> open_manager(const Options& o, const Pepper& pepper,
                                                  bool may_create_db) {
  refuse_secret(o.db, "--db", pepper.hex.reveal());
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(pepper.bytes.reveal());
  apikeys::SqliteStoreOptions store_options;
  store_options.create_if_missing = may_create_db;  // an empty file, like a missing one
  auto store = std::make_shared<apikeys::SqliteStore>(std::string(o.db), store_options);
  // Defaults: no cache (one-shot process), last use recorded by the Validator's
  // background writer and flushed when the KeyManager is destroyed, before exit.
  return std::make_unique<apikeys::KeyManager>(std::move(store), std::move(hasher));
}

int cmd_create(const Options& o, bool has_expiry) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  check_db(o, /*may_create_db=*/true);
  const Pepper pepper = load_pepper(o.pepper_file);
  refuse_secret(o.title, "--title", pepper.hex.reveal());
  refuse_secret(o.description, "--description", pepper.hex.reveal());
  apikeys::CreateRequest request;
  request.title = std::string(o.title);
  request.description = std::string(o.description);
  if (has_expiry) request.expires_in_days = o.expires_in_days;
  // Check the request before touching the database, so a bad request creates nothing.
  request = apikeys::normalize_request(request);

  auto manager = open_manager(o, pepper, /*may_create_db=*/true);
  const apikeys::CreatedKey created = manager->create(account, request);
  const apikeys::KeyInfo& k = created.info;

  Json out;
  out["key_id"] = k.key_id.to_string();
  out["public_key"] = k.public_key;
  out["secret_key"] = "";  // filled in by emit_with_secret
  out["title"] = k.title;
  out["description"] = k.description;
  out["status"] = apikeys::to_string(k.status);
  out["expires_at"] = time_or_null(k.expires_at);
  out["created_at"] = apikeys::format_utc(k.created_at);
  if (!emit_with_secret(dump(out), created.secret_key.reveal())) {
    std::cerr << "apikeys: key " << k.key_id.to_string()
              << " was created but its secret could not be written to stdout; revoke it\n";
    return kExitFailure;
  }
  return kExitOk;
}

int cmd_list(const Options& o) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  Json out = Json::array();
  for (const apikeys::KeyInfo& k : manager->list(account)) {
    Json item;
    item["key_id"] = k.key_id.to_string();
    item["public_key"] = k.public_key;
    item["title"] = k.title;
    item["description"] = k.description;
    item["status"] = apikeys::to_string(k.status);
    item["created_at"] = apikeys::format_utc(k.created_at);
    item["expires_at"] = time_or_null(k.expires_at);
    item["last_used_at"] = time_or_null(k.last_used_at);
    out.push_back(std::move(item));
  }
  return emit(dump(out)) ? kExitOk : kExitFailure;
}

int cmd_revoke_or_delete(const Options& o, bool remove) {
  const apikeys::Uuid account = parse_uuid(o.account, "--account");
  const apikeys::Uuid key_id = parse_uuid(o.key_id, "--key-id");
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  Json out;
  try {
    const apikeys::KeyInfo k =
        remove ? manager->remove(account, key_id) : manager->revoke(account, key_id);
    out["key_id"] = k.key_id.to_string();
    if (remove) {
      out["deleted"] = true;
    } else {
      out["status"] = apikeys::to_string(k.status);
    }
  } catch (const apikeys::Error& e) {
    if (e.code() != apikeys::ErrorCode::not_found) throw;
    std::cerr << "apikeys: no key " << key_id.to_string() << " for account " << account.to_string()
              << '\n';
    return kExitNotFound;
  }
  return emit(dump(out)) ? kExitOk : kExitFailure;
}

int cmd_verify(const Options& o) {
  std::string line;
  WipeGuard line_guard(line);
  const bool from_stdin = o.first == "-" && o.second.empty();
  const std::string_view token = from_stdin ? read_token_line(line) : std::string_view();
  check_db(o, false);
  auto manager = open_manager(o, load_pepper(o.pepper_file), /*may_create_db=*/false);
  apikeys::ValidationResult r;
  if (from_stdin) {
    r = manager->validate(token);
  } else if (o.second.empty()) {
    r = manager->validate(o.first);
  } else {
    r = manager->validate(o.first, o.second);
  }
  Json out;
  out["valid"] = r.ok();
  out["code"] = apikeys::to_string(r.code);
  out["account_id"] = r.ok() ? Json(r.account_id.to_string()) : Json(nullptr);
  out["key_id"] = r.ok() ? Json(r.key_id.to_string()) : Json(nullptr);
  if (!emit(dump(out))) return kExitFailure;
  if (r.ok()) return kExitOk;
  // `error` means the check could not be made (store or hasher failure): not a verdict.
  return r.code == apikeys::ValidationCode::error ? kExitFailure : kExitRejected;
}

int exit_code_for(apikeys::ErrorCode code) noexcept {
  switch (code) {
    case apikeys::ErrorCode::invalid_argument: return kExitUsage;
    case apikeys::ErrorCode::not_found: return kExitNotFound;
    case apikeys::ErrorCode::already_exists:
    case apikeys::ErrorCode::busy:
    case apikeys::ErrorCode::storage:
    case apikeys::ErrorCode::crypto:
    case apikeys::ErrorCode::not_supported:
    case apikeys::ErrorCode::conflict: return kExitFailure;
  }
  return kExitFailure;
}

}  // namespace

int run_command(int argc, char** argv) {
  // First of all: take every argument that may be a secret out of argv and out of the
  // parser's sight.
  CommandLine cmd(argc, argv);
  Parsed p;

  CLI::App app{
      "Issue, list, revoke, delete and verify API keys stored in a SQLite file.\n"
      "The pepper (HMAC key, at least 64 hex characters) comes from the\n"
      "APIKEYS_PEPPER environment variable or --pepper-file.",
      "apikeys"};
  app.set_version_flag("--version", std::string(apikeys::version()),
                       "Print the library version and exit");
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the command
  app.add_option("--db", p.db, "SQLite database file (created by `create` if missing)")
      ->option_text("PATH")
      ->required();
  app.add_option("--pepper-file", p.pepper_file,
                 "File holding the hex pepper (overrides APIKEYS_PEPPER)")
      ->option_text("FILE");
  // Any argument may be a secret pasted in the wrong place, and CLI11 quotes values in
  // its messages ("Could not convert: --expires-in-days = sk_..."): never echo them.
  app.failure_message([&cmd](const CLI::App*, const CLI::Error& e) {
    // CLI11 names the error after the (sub)command, so test its exit code, not its name.
    const bool extras = e.get_exit_code() == static_cast<int>(CLI::ExitCodes::ExtrasError);
    std::string message =
        extras ? std::string("unexpected extra arguments (not shown: they may be secrets)")
               : redact_arguments(e.what(), cmd.argc(), cmd.argv());
    return "apikeys: " + message + "\nRun with --help for more information.\n";
  });

  CLI::App* create = app.add_subcommand(
      "create", "Create a key and print it with its secret (shown only this once)");
  create->add_option("--account", p.account, "Account UUID")->option_text("UUID")->required();
  create
      ->add_option("--title", p.title,
                   "1-255 characters; no control, bidi or zero-width characters")
      ->option_text("TEXT")
      ->required();
  create->add_option("--description", p.description, "Optional, up to 1024 characters")
      ->option_text("TEXT");
  CLI::Option* expires = create
                             ->add_option("--expires-in-days", p.expires_in_days,
                                          "Lifetime, 1-365 days (default: never expires)")
                             ->option_text("N");

  CLI::App* list =
      app.add_subcommand("list", "List an account's keys, newest first (never secrets)");
  list->add_option("--account", p.account, "Account UUID")->option_text("UUID")->required();

  CLI::App* revoke = app.add_subcommand("revoke", "Revoke a key: it is rejected from then on");
  revoke->add_option("--account", p.account, "Account UUID")->option_text("UUID")->required();
  revoke->add_option("--key-id", p.key_id, "Key UUID (from create or list)")
      ->option_text("UUID")
      ->required();

  CLI::App* remove = app.add_subcommand("delete", "Delete a key permanently");
  remove->add_option("--account", p.account, "Account UUID")->option_text("UUID")->required();
  remove->add_option("--key-id", p.key_id, "Key UUID (from create or list)")
      ->option_text("UUID")
      ->required();

  CLI::App* verify = app.add_subcommand(
      "verify",
      "Check a key: `verify PUBLIC SECRET`, `verify PUBLIC:SECRET`, or `verify -` (token on stdin)");
  verify
      ->add_option("key", p.first,
                   "Public key, pk_...:sk_... token, or - to read the token from stdin")
      ->required();
  verify->add_option("secret", p.second, "Secret key, when the public key is given alone");

  try {
    app.parse(cmd.argc(), cmd.argv());
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help, version or the error message
    return rc == 0 ? kExitOk : kExitUsage;
  }
  cmd.blank(p.first);
  cmd.blank(p.second);
  const Options o(p, cmd);

  try {
    if (*create) return cmd_create(o, expires->count() > 0);
    if (*list) return cmd_list(o);
    if (*revoke) return cmd_revoke_or_delete(o, false);
    if (*remove) return cmd_revoke_or_delete(o, true);
    if (*verify) return cmd_verify(o);
    std::cerr << "apikeys: no command given\n";
    return kExitUsage;
  } catch (const UsageError& e) {
    std::cerr << "apikeys: " << e.what() << '\n';
    return kExitUsage;
  } catch (const apikeys::Error& e) {
    std::cerr << "apikeys: " << apikeys::to_string(e.code()) << ": " << cmd.redact(e.what())
              << '\n';
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    std::cerr << "apikeys: internal error: " << cmd.redact(e.what()) << '\n';
    return kExitFailure;
  }
}

int run(int argc, char** argv) noexcept {
  disable_core_dumps();
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
