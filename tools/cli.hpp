// The apikeys command-line tool as a library: run() is the whole program (tools/main.cpp
// only calls it), and the text handling it relies on to keep secrets out of sight is
// declared here so that tests/fuzz/fuzz_cli.cpp checks the shipped code itself.
// Internal to this repository: not installed, not part of the library's API.
//
// The tool creates, lists, shows, changes, rotates, revokes, deletes and verifies keys,
// and sets their rate limits and credits, in one SQLite file or a PostgreSQL database (--db
// postgresql://..., in builds with PostgresStore), optionally erasing changed keys from a shared
// RedisCache (--redis); it imports keys exported from the reference Python service (import, with
// its API_KEY_SECRET as --legacy-pepper-file), counts keys per pepper (peppers), prints and prunes
// the audit trail (audit, audit-prune; each change records --actor and --reason), and finds leaked
// keys in files (scan, which needs neither database nor pepper). It prints JSON on stdout (scan:
// one line per key found) and diagnostics on stderr. Exit codes: 0 success / key valid / nothing
// found, 1 key rejected (verify) or a key found (scan), 2 usage (bad option, value or pepper; scan:
// a path it could not read), 3 no such key for that account, 4 storage or internal failure, 5
// conflict (the key's version is not --expected-version, or its state forbids the change), 6
// import: some rows were rejected (the others were imported). Secrets: only `create` and `rotate`
// print one. No message shows a presented secret, the pepper, a database password or a value that
// may be one of them (a URL, a path shaped like a secret or holding a key=value password, a
// positional argument). Every argument that may hold a secret is copied out of argv and
// blanked there before anything parses it (so `ps` and /proc/PID/cmdline stop showing
// it); the argument parser and the JSON writer never see a secret, and the copies this
// program makes are wiped before they are freed. The process cannot dump core: its
// memory holds the pepper.
//
// Thread-safety: the text functions are pure and may run on any thread; run() and
// run_command() use process-wide state (standard streams, environment, resource
// limits), so only one may run at a time. Ownership: see CommandLine.
#ifndef APIKEYS_TOOLS_CLI_HPP
#define APIKEYS_TOOLS_CLI_HPP

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/types.hpp"

namespace apikeys::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitRejected = 1,
  kExitUsage = 2,
  kExitNotFound = 3,
  kExitFailure = 4,
  kExitConflict = 5,
  kExitSomeRejected = 6,  // import: some rows were rejected, the others imported
  kExitFound = 1,         // scan: at least one key was found
};

// The program: disables core dumps, then runs the command line `argv` (see
// run_command). Never throws; returns the exit code. Blanks secret-shaped arguments
// in `argv` in place.
int run(int argc, char** argv) noexcept;

// Parses `argv` and runs the command it names, without touching process settings.
// Returns the exit code; throws only what it could not report (e.g. bad_alloc).
int run_command(int argc, char** argv);

// Makes the process unable to dump core or be traced by other processes of its user: a
// core file would hold the pepper and any secret in memory.
void disable_core_dumps() noexcept;

// A request the user must fix (exit 2). The message never contains a secret.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What stands for a hidden argument in what the parser sees: "<not shown #N>".
inline constexpr std::string_view kPlaceholderStart = "<not shown #";

// True for the ASCII white space characters (" \t\n\r\f\v").
[[nodiscard]] bool is_space(char c) noexcept;

// `s` without leading and trailing white space.
[[nodiscard]] std::string_view trim(std::string_view s) noexcept;

// True when `text` holds a secret key: "sk_" and 32 base62 characters
// (detail::holds_secret_key(), the rule import_keys() applies too).
[[nodiscard]] bool holds_secret_key(std::string_view text) noexcept;

// True when `text` may be, or hold, a secret or the pepper: it contains the secret
// prefix, a run of 32 or more base62 characters (a secret without its prefix, or pepper
// hex), a postgres:// or postgresql:// URL (which may hold a password; any letter case),
// or the text of a placeholder (so that one typed in cannot pass for ours).
// Deliberately broad: a value caught by mistake (a title like "task_list") still reaches
// its option unchanged, it is only hidden from `ps` and from the parser.
[[nodiscard]] bool may_hold_secret(std::string_view text) noexcept;

// Decodes the hex pepper in `text` (white space around it ignored; at least 64 digits).
// Throws UsageError naming `source`, never showing the text.
[[nodiscard]] apikeys::SecretString decode_pepper(std::string_view text, const std::string& source);

// Replaces in `message` every command-line value long enough to be a secret (the
// shortest key format is 22 characters; 8 leaves a wide margin) with "<not shown>".
// Option names stay, so "--expires-in-days = <not shown>" still says what was wrong.
[[nodiscard]] std::string redact_arguments(std::string message, int argc, const char* const* argv);

// `json` (UTF-8 JSON text, as the CLI prints it) with every character that a terminal
// could act on, or that hides or reorders text, written as a \uXXXX escape: C0
// controls (but tab and newline between tokens, JSON's whitespace; a carriage return
// there becomes a space), DEL, C1 controls, U+2028 and U+2029, and the invisible and
// bidirectional characters (soft hyphen, zero-width, bidi controls, tag characters...);
// a byte that is not UTF-8 becomes \ufffd. Everything else is kept. In valid JSON such
// characters stand only inside strings, where the escape means the same: a parser
// reads the same values.
[[nodiscard]] std::string escape_json_output(std::string_view json);

// Where a new secret goes in `json` (the CLI's printed JSON, as escape_json_output()
// leaves it): before the closing quote of the empty value of the one member named
// "secret_key" at nesting depth `depth` (1: a member of the outermost object). Found by
// reading the JSON's structure, not by searching its text: a key's stored metadata is
// printed as stored, with its own whitespace, and may hold a member of that name on a
// line shaped like the key's own, but always deeper down. npos unless there is exactly
// one.
[[nodiscard]] std::size_t secret_slot(std::string_view json, int depth);

// One key that `scan` found.
struct ScanFinding {
  std::uint64_t offset = 0;  // where the key starts in the input, in bytes
  std::uint64_t line = 0;    // the line it starts on, from 1
  bool legacy = false;       // "pk_"/"sk_" + 32 base62, no checksum (see apikeys::FoundKey)
  bool secret = false;       // a secret key rather than a public one
  std::string shown;         // what may be shown: never a whole secret
};

// Input with a NUL byte among its first kScanBinaryProbe bytes is binary: not scanned.
inline constexpr std::size_t kScanBinaryProbe = 8192;
// The chunk size `scan` reads files in.
inline constexpr std::size_t kScanChunk = std::size_t{1} << 20;
// The smallest chunk scan_fd() accepts (a smaller one is raised to it).
inline constexpr std::size_t kMinScanChunk = 256;

// Reads `fd` to its end in chunks of `chunk` bytes and calls `report` for every key
// apikeys::find_keys() finds in the whole input, once each and in order, a key across
// a chunk edge included. Calls nothing for binary input (see kScanBinaryProbe). Returns
// false when a read failed (keys before the failure have been reported). The buffer
// is wiped before it is freed. Thread-safe (no shared state).
bool scan_fd(int fd, std::size_t chunk, const std::function<void(const ScanFinding&)>& report);

// The command line as the argument parser sees it. Each argument that may hold a secret
// (may_hold_secret) is copied into a SecretString, blanked in argv at once, and shown to
// the parser as "<not shown #N>" (after its "--name=" or leading dashes, which stay, so
// the parser classifies the argument as before). The parser copies arguments into
// buffers it frees without wiping; this way none of them ever holds a secret, and
// resolve() gives an option its real value back.
// Not thread-safe. Ownership: the secrets are wiped when this object dies; `argv`'s
// strings are blanked in place and must outlive this object.
class CommandLine {
 public:
  CommandLine(int argc, char** argv);
  CommandLine(const CommandLine&) = delete;
  CommandLine& operator=(const CommandLine&) = delete;

  [[nodiscard]] int argc() const noexcept { return static_cast<int>(view_.size()); }
  [[nodiscard]] const char* const* argv() const noexcept { return pointers_.data(); }

  // The real value of an option the parser set to `parsed`: `parsed` itself unless it
  // is a placeholder, or a hidden argument whole as the parser saw it (its kept prefix
  // and its placeholder: a value starting with a dash).
  [[nodiscard]] std::string_view resolve(const std::string& parsed) const noexcept;

  // Blanks in argv every argument the parser received as `parsed` (verify's arguments:
  // secrets in a format not recognised above are hidden too, once parsed).
  void blank(const std::string& parsed) noexcept;

  // `message` with every hidden value (of 8 characters or more) replaced: a last guard
  // for messages that come from elsewhere (the library, the standard library).
  [[nodiscard]] std::string redact(std::string message) const;

 private:
  // What stays of an argument that is hidden: "--name=" of an option with its value, or
  // the leading dashes of anything else that starts with one.
  static std::size_t kept_prefix(std::string_view arg) noexcept;

  char** argv_;
  std::vector<std::string> view_;              // what the parser sees; never a secret
  std::vector<const char*> pointers_;          // argv-style pointers into view_
  std::vector<apikeys::SecretString> hidden_;  // the hidden values, by placeholder number
  std::vector<apikeys::SecretString> whole_;   // their arguments whole, prefix included
};

}  // namespace apikeys::cli

#endif  // APIKEYS_TOOLS_CLI_HPP
