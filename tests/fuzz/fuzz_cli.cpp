// fuzz_cli: the CLI's own text handling, linked from the library the apikeys tool is
// built from (apikeys_cli_lib, tools/cli.hpp), so the fuzzed code is the shipped code:
// redact_arguments (keeps command-line values out of
// CLI11's error messages), decode_pepper, trim, CommandLine (hides arguments that may be
// secrets from argv and from the parser) and holds_secret_key, and then the whole
// argument parser (CLI11 plus our failure_message) on fuzzed argument lists that can
// never reach a database, a pepper or stdin; and escape_json_output (what keeps stored
// text from acting on a terminal) on the message, as text and as JSON.
// Input: fields separated by NUL bytes; the first is a message, the rest arguments.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "apikeys/apikeys.hpp"
#include "cli.hpp"
#include "fuzz_support.hpp"

namespace {

using apikeys::cli::CommandLine;
using apikeys::cli::decode_pepper;
using apikeys::cli::holds_secret_key;
using apikeys::cli::is_space;
using apikeys::cli::kExitFailure;
using apikeys::cli::kExitOk;
using apikeys::cli::kExitUsage;
using apikeys::cli::kPlaceholderStart;
using apikeys::cli::may_hold_secret;
using apikeys::cli::redact_arguments;
using apikeys::cli::trim;
using apikeys::cli::UsageError;

// argv-style copies of `args` (NUL-terminated, writable, like the real argv).
struct Argv {
  explicit Argv(const std::vector<std::string>& args) {
    storage = args;
    for (auto& s : storage) pointers.push_back(s.data());
    pointers.push_back(nullptr);
  }
  int argc() const { return static_cast<int>(pointers.size()) - 1; }
  char** argv() { return pointers.data(); }
  std::vector<std::string> storage;
  std::vector<char*> pointers;
};

// Which command-line values redact_arguments hides (see its comment in tools/cli.hpp).
std::string_view redactable_value(std::string_view arg) {
  if (arg.size() > 1 && arg[0] == '-') {
    const auto eq = arg.find('=');
    if (eq == std::string_view::npos) return {};
    arg.remove_prefix(eq + 1);
  }
  return arg.size() >= 8 ? arg : std::string_view{};
}

void check_redact(const std::string& message, Argv& a) {
  const std::string out = redact_arguments(message, a.argc(), a.argv());
  constexpr std::string_view kMark = "<not shown>";
  for (int i = 1; i < a.argc(); ++i) {
    const std::string_view value = redactable_value(a.argv()[i]);
    if (value.empty()) continue;
    // A value containing '<' or '>', or lying inside the marker itself, can be re-formed
    // from the marker and the text around it; any other value must be gone.
    if (value.find_first_of("<>") != std::string_view::npos) continue;
    if (kMark.find(value) != std::string_view::npos) continue;
    FUZZ_CHECK(out.find(value) == std::string::npos);
  }
}

// The reference the pepper decoder is checked against: the value of hex digit `c`, or -1.
int hex_digit(char c) {
  constexpr std::string_view kDigits = "0123456789abcdef";
  const char lower = (c >= 'A' && c <= 'F') ? static_cast<char>(c - 'A' + 'a') : c;
  const auto at = kDigits.find(lower);
  return at == std::string_view::npos ? -1 : static_cast<int>(at);
}

void check_pepper(std::string_view text) {
  const std::string_view hex = trim(text);
  bool ref_ok = hex.size() >= 64 && hex.size() % 2 == 0;
  for (char c : hex) ref_ok = ref_ok && hex_digit(c) >= 0;
  try {
    const apikeys::SecretString pepper = decode_pepper(text, "SOURCE");
    FUZZ_CHECK(ref_ok);
    FUZZ_CHECK(pepper.size() == hex.size() / 2);
    for (std::size_t i = 0; i < pepper.size(); ++i) {
      const int byte = hex_digit(hex[2 * i]) * 16 + hex_digit(hex[2 * i + 1]);
      FUZZ_CHECK(static_cast<unsigned char>(pepper.reveal()[i]) == byte);
    }
  } catch (const UsageError& e) {
    FUZZ_CHECK(!ref_ok);
    // The message is the source's name and a fixed rule: never any of the text.
    const std::string_view m = e.what();
    FUZZ_CHECK(m.substr(0, 7) == "SOURCE ");
    const std::string_view rule = m.substr(7);
    FUZZ_CHECK(rule == "is not valid hex" || rule == "is not valid hex (odd number of digits)" ||
               rule.substr(0, 42) == "must hold at least 64 hex characters (32 b");
  }
}

void check_trim_and_hide(const std::vector<std::string>& args) {
  for (const auto& s : args) {
    const std::string_view t = trim(s);
    FUZZ_CHECK(t.empty() || (!is_space(t.front()) && !is_space(t.back())));
    FUZZ_CHECK(s.find(t) != std::string::npos);
    // A secret key anywhere is always caught by the (broader) argument filter.
    FUZZ_CHECK(!holds_secret_key(s) || may_hold_secret(s));
  }
  Argv a(args);
  const CommandLine cmd(a.argc(), a.argv());
  FUZZ_CHECK(cmd.argc() == a.argc());
  for (int i = 1; i < a.argc(); ++i) {
    const std::string& before = args[static_cast<std::size_t>(i)];
    const std::string_view now(a.argv()[i], before.size());  // blanked bytes are NULs
    const std::string_view seen = cmd.argv()[i];             // what the parser gets
    if (!may_hold_secret(before)) {
      FUZZ_CHECK(now == before);
      FUZZ_CHECK(seen == before);
      continue;
    }
    // Hidden: the parser sees the kept prefix and a placeholder, argv keeps the prefix
    // and zeros, and resolve() gives the value back from the placeholder.
    const auto keep = seen.rfind(kPlaceholderStart);
    FUZZ_CHECK(keep != std::string_view::npos && keep <= before.size());
    FUZZ_CHECK(seen.substr(0, keep) == std::string_view(before).substr(0, keep));
    FUZZ_CHECK(now.substr(0, keep) == std::string_view(before).substr(0, keep));
    FUZZ_CHECK(now.substr(keep).find_first_not_of('\0') == std::string_view::npos);
    FUZZ_CHECK(cmd.resolve(std::string(seen.substr(keep))) ==
               std::string_view(before).substr(keep));
  }
}

bool has_unprintable(std::string_view s) {
  for (char c : s) {
    const auto b = static_cast<unsigned char>(c);
    if ((b < 0x20 && b != '\n' && b != '\t') || b >= 0x7F) return true;
  }
  return false;
}

// The directory every path the parser may open lies under: it does not exist.
constexpr std::string_view kNowhere = "/nonexistent-apikeys-fuzz-dir/";

// Runs the real parser on the fuzzed arguments. Arguments that could make a command
// read stdin ("-"), a file (--pepper-file, --legacy-pepper-file) or a chosen database
// (--db) are dropped; the --db given points into a directory that does not exist and no
// pepper is set, so every command that needs them fails before any I/O. `scan` needs
// neither: after it, every argument that does not look like an option to CLI11 is put
// under kNowhere (and "--" is dropped, so that none is taken as a path unseen), so it
// never reads stdin, a device or the file system (`scan /` would walk all of it,
// `scan /dev/zero` would never end). Output goes nowhere.
//
// CLI11 takes "-" then a letter, or "--" then a letter, as an option; anything else
// that starts with '-' ("-0", "---", "-!x") is a positional, which scan would open.
bool looks_like_option(const std::string& s) {
  const auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (s.size() >= 2 && s[0] == '-' && letter(s[1])) return true;
  return s.size() >= 3 && s[0] == '-' && s[1] == '-' && letter(s[2]);
}

void check_parser(const std::vector<std::string>& fuzzed) {
  std::vector<std::string> args{"apikeys"};
  bool after_scan = false;
  for (const auto& s : fuzzed) {
    if (s == "-" || s.rfind("--pepper", 0) == 0 || s.rfind("--legacy-pepper", 0) == 0 ||
        s.rfind("--db", 0) == 0) {
      continue;
    }
    if (after_scan && s == "--") continue;
    args.push_back(after_scan && !looks_like_option(s) ? std::string(kNowhere) + s : s);
    after_scan = after_scan || s == "scan";
  }
  args.emplace_back("--db");
  args.emplace_back(std::string(kNowhere) + "fuzz.db");
  Argv a(args);
  std::ostringstream sink;
  auto* out = std::cout.rdbuf(sink.rdbuf());
  auto* err = std::cerr.rdbuf(sink.rdbuf());
  const int rc = apikeys::cli::run_command(a.argc(), a.argv());
  std::cout.rdbuf(out);
  std::cerr.rdbuf(err);
  // Every path fails closed (no database, no pepper) or prints help/version.
  FUZZ_CHECK(rc == kExitOk || rc == kExitUsage || rc == kExitFailure);
  const std::string text = sink.str();
  // Whatever the arguments held, the output is printable ASCII, tabs and newlines: no
  // escape sequence or forged line reaches a terminal.
  for (const char c : text) {
    const auto b = static_cast<unsigned char>(c);
    FUZZ_CHECK((b >= 0x20 && b < 0x7F) || b == '\n' || b == '\t');
  }
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string_view value = redactable_value(args[i]);
    // The tool's own text (help, rules) may contain a printable argument by chance; it
    // has no control byte but tab and newline and no non-ASCII byte, so a value with
    // one must not be found in it.
    if (value.size() < 16 || value.find_first_of("<>") != std::string_view::npos) continue;
    if (!has_unprintable(value)) continue;
    if (text.find(value) != std::string::npos) {
      std::fprintf(stderr, "argument echoed in output:\n%s\n", text.c_str());
    }
    FUZZ_CHECK(text.find(value) == std::string::npos);
  }
}

// A second reading of what escape_json_output() must leave escaped, for checking it:
// controls, line separators, and the invisible and bidirectional characters.
bool hazard(std::uint32_t cp) {
  static constexpr std::uint32_t kSingles[] = {0x00AD, 0x034F, 0x061C, 0x115F, 0x1160,
                                               0x180E, 0x3164, 0xFEFF, 0xFFA0};
  static constexpr std::uint32_t kRanges[][2] = {
      {0x00, 0x1F},     {0x7F, 0x9F},     {0x200B, 0x200F}, {0x2028, 0x202E},
      {0x2060, 0x2064}, {0x2066, 0x2069}, {0xFFF9, 0xFFFB}, {0xE0000, 0xE007F}};
  for (const std::uint32_t c : kSingles) {
    if (cp == c) return true;
  }
  for (const auto& r : kRanges) {
    if (cp >= r[0] && cp <= r[1]) return true;
  }
  return false;
}

// The code point at `i` (advanced past it), or kNotUtf8.
constexpr std::uint32_t kNotUtf8 = 0xFFFFFFFF;
std::uint32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto c = static_cast<unsigned char>(s[i++]);
  if (c < 0x80) return c;
  const int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : -1;
  if (n < 0 || s.size() - i < static_cast<std::size_t>(n)) return kNotUtf8;
  std::uint32_t cp = c & (0x3Fu >> n);
  for (int k = 0; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i++]);
    if ((b & 0xC0) != 0x80) return kNotUtf8;
    cp = (cp << 6) | (b & 0x3Fu);
  }
  static constexpr std::uint32_t kLeast[] = {0x80, 0x800, 0x10000};
  if (cp < kLeast[n - 1] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kNotUtf8;
  return cp;
}

// secret_slot(): with the text as a key's metadata (when it is a JSON object, printed as
// stored, whitespace and all), the secret goes into the key's own field and nowhere
// else, whatever members and lines the metadata holds.
void check_secret_slot(const std::string& text, const nlohmann::json& parsed) {
  using Json = nlohmann::json;
  const std::size_t first = text.find_first_not_of(" \t\r\n");
  if (parsed.is_discarded() || !parsed.is_object() || first == std::string::npos) return;
  for (int depth = 1; depth <= 2; ++depth) {
    std::string json =
        "{\n  \"key_id\": \"k\",\n  \"secret_key\": \"\",\n  \"metadata\": " + text + "\n}";
    if (depth == 2)
      json = "{\n  \"new\": " + json + ",\n  \"old\": {\"metadata\": " + text + "}\n}";
    const std::string out = apikeys::cli::escape_json_output(json);
    const std::size_t slot = apikeys::cli::secret_slot(out, depth);
    FUZZ_CHECK(slot != std::string::npos);
    const std::string filled = out.substr(0, slot) + "sk_SECRET" + out.substr(slot);
    const Json back = Json::parse(filled);
    const Json& key = depth == 1 ? back : back.at("new");
    FUZZ_CHECK(key.at("secret_key") == "sk_SECRET");
    FUZZ_CHECK(key.at("metadata") == parsed);
  }
}

// escape_json_output(): whatever the text, the result is UTF-8 and leaves nothing a
// terminal acts on raw but tab and newline (JSON's whitespace); JSON text keeps its
// values; and JSON as the CLI prints it comes out without a raw tab at all.
void check_json_escape(const std::string& text) {
  using Json = nlohmann::json;
  const std::string out = apikeys::cli::escape_json_output(text);
  for (std::size_t i = 0; i < out.size();) {
    const std::uint32_t cp = next_code_point(out, i);
    FUZZ_CHECK(cp != kNotUtf8);
    FUZZ_CHECK(cp == '\t' || cp == '\n' || !hazard(cp));
  }
  // Deep nesting is nlohmann's recursion, not ours: left out.
  if (std::count(text.begin(), text.end(), '[') + std::count(text.begin(), text.end(), '{') > 64) {
    return;
  }
  const Json parsed = Json::parse(text, nullptr, false);
  if (!parsed.is_discarded()) FUZZ_CHECK(Json::parse(out, nullptr, false) == parsed);
  Json object = Json::object();
  object["m"] = text;
  const std::string dumped = object.dump(2, ' ', false, Json::error_handler_t::replace);
  const std::string escaped = apikeys::cli::escape_json_output(dumped);
  FUZZ_CHECK(escaped.find_first_of("\t\r") == std::string::npos);
  FUZZ_CHECK(Json::parse(escaped, nullptr, false) == Json::parse(dumped));
  check_secret_slot(text, parsed);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  unsetenv("APIKEYS_PEPPER");  // check_parser relies on there being no pepper
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Reader in(data, size);
  const std::string message(in.field());
  std::vector<std::string> args{"apikeys"};
  while (!in.empty() && args.size() < 16) args.emplace_back(in.field());

  Argv a(args);
  check_redact(message, a);
  check_pepper(message);
  check_json_escape(message);
  check_trim_and_hide(args);
  check_parser(std::vector<std::string>(args.begin() + 1, args.end()));
  return 0;
}
