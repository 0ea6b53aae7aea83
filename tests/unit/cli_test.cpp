// End-to-end tests of the apikeys command-line tool: each test runs the real binary
// (APIKEYS_CLI_PATH) with fork/execve, no shell, and checks exit codes, JSON output and
// that no secret leaks. The cross-process test checks that a revoke made by another
// process reaches an in-process validator's cache within a second. The last tests look
// at the running CLI: what it frees (under an LD_PRELOAD free() hook), its core dump
// settings and its command line in /proc.
#ifdef APIKEYS_CLI_PATH

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <SQLiteCpp/Database.h>
#include <SQLiteCpp/Statement.h>
#include <nlohmann/json.hpp>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "foreign_files.hpp"
#include "process_support.hpp"
#include "temp_dir.hpp"

#include "../../src/hex.hpp"

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// 32 bytes of hex; only for tests.
const std::string kPepperHex = "00112233445566778899aabbccddeeff0123456789abcdef0123456789abcdef";
const std::string kOtherPepperHex =
    "fedcba9876543210fedcba9876543210ffeeddccbbaa99887766554433221100";

using Run = apikeys_test::ProgramRun;

// Runs the CLI with `args` (argv[1..]) and an environment holding only
// APIKEYS_PEPPER=`pepper` (or nothing when nullopt). `input` is fed to its stdin.
Run run_cli(const std::vector<std::string>& args,
            const std::optional<std::string>& pepper = kPepperHex, const std::string& input = "") {
  std::vector<std::string> argv{APIKEYS_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> env;
  if (pepper) env.push_back("APIKEYS_PEPPER=" + *pepper);
  return apikeys_test::run_program(argv, env, input);
}

using apikeys_test::TempDir;

std::string hex_decode(const std::string& hex) {
  const std::optional<std::string> bytes = apikeys::detail::hex_decode(hex);
  REQUIRE(bytes.has_value());
  return *bytes;
}

const std::string kAccount = "7f0c2d2e-1b1a-4c58-9a39-0b7f1e6c2a11";
const std::string kOtherAccount = "5b3a0c9e-8d6f-4e21-b7a4-3c2d1e0f9a88";

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Runs `create` and returns its parsed output (REQUIREs success).
Json create_key(const std::string& db, const std::string& account = kAccount,
                const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args{"--db", db, "create", "--account", account, "--title", "CI key"};
  args.insert(args.end(), extra.begin(), extra.end());
  const Run r = run_cli(args);
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  return Json::parse(r.out);
}

// Polls `done` every 10 ms until it holds (true) or `limit` has passed (false).
template <typename F>
bool eventually(F done, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// The soft and hard "Max core file size" of /proc/PID/limits, e.g. "0 0" or
// "unlimited unlimited"; empty if the line is missing.
std::string core_limits(const std::string& limits) {
  std::istringstream in(limits);
  for (std::string line; std::getline(in, line);) {
    const std::string label = "Max core file size";
    if (line.rfind(label, 0) != 0) continue;
    std::istringstream fields(line.substr(label.size()));
    std::string soft, hard;
    fields >> soft >> hard;
    return soft + " " + hard;
  }
  return {};
}

}  // namespace

TEST_CASE("cli: create, list, verify, revoke, delete", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  std::vector<Run> others;  // every run after create: none may show the secret

  const Json created = create_key(db, kAccount, {"--description", "used by the nightly job"});
  REQUIRE(created.is_object());
  const std::string key_id = created.at("key_id").get<std::string>();
  const std::string public_key = created.at("public_key").get<std::string>();
  const std::string secret = created.at("secret_key").get<std::string>();
  CHECK(public_key.rfind("pk_", 0) == 0);
  CHECK(secret.rfind("sk_", 0) == 0);
  CHECK(created.at("title") == "CI key");
  CHECK(created.at("description") == "used by the nightly job");
  CHECK(created.at("status") == "active");
  CHECK(created.at("expires_at").is_null());
  CHECK(created.at("created_at").get<std::string>().back() == 'Z');

  // list shows the key, without secret or digest.
  Run r = run_cli({"--db", db, "list", "--account", kAccount});
  others.push_back(r);
  REQUIRE(r.code == 0);
  Json listed = Json::parse(r.out);
  REQUIRE(listed.is_array());
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].at("key_id") == key_id);
  CHECK(listed[0].at("public_key") == public_key);
  CHECK(listed[0].at("title") == "CI key");
  CHECK(listed[0].at("status") == "active");
  CHECK(listed[0].at("last_used_at").is_null());
  CHECK_FALSE(listed[0].contains("secret_key"));
  CHECK_FALSE(listed[0].contains("digest"));

  // verify PUBLIC SECRET
  r = run_cli({"--db", db, "verify", public_key, secret});
  others.push_back(r);
  REQUIRE(r.code == 0);
  Json v = Json::parse(r.out);
  CHECK(v.at("valid") == true);
  CHECK(v.at("code") == "valid");
  CHECK(v.at("account_id") == kAccount);
  CHECK(v.at("key_id") == key_id);

  // verify TOKEN
  r = run_cli({"--db", db, "verify", public_key + ":" + secret});
  others.push_back(r);
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).at("valid") == true);

  // verify - (token on stdin, kept out of the process arguments)
  r = run_cli({"--db", db, "verify", "-"}, kPepperHex, public_key + ":" + secret + "\n");
  others.push_back(r);
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).at("valid") == true);

  // The CLI exits through the Validator's destructor, which flushes last use.
  r = run_cli({"--db", db, "list", "--account", kAccount});
  others.push_back(r);
  REQUIRE(r.code == 0);
  listed = Json::parse(r.out);
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].at("last_used_at").is_string());

  // revoke, then verify is rejected as revoked.
  r = run_cli({"--db", db, "revoke", "--account", kAccount, "--key-id", key_id});
  others.push_back(r);
  REQUIRE(r.code == 0);
  Json revoked = Json::parse(r.out);
  CHECK(revoked.at("key_id") == key_id);
  CHECK(revoked.at("status") == "revoked");

  r = run_cli({"--db", db, "verify", public_key, secret});
  others.push_back(r);
  CHECK(r.code == 1);
  v = Json::parse(r.out);
  CHECK(v.at("valid") == false);
  CHECK(v.at("code") == "revoked");
  CHECK(v.at("account_id").is_null());
  CHECK(v.at("key_id").is_null());

  // Revoking twice succeeds.
  r = run_cli({"--db", db, "revoke", "--account", kAccount, "--key-id", key_id});
  others.push_back(r);
  CHECK(r.code == 0);

  r = run_cli({"--db", db, "list", "--account", kAccount});
  others.push_back(r);
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).at(0).at("status") == "revoked");

  // delete, then verify says not_found and list is empty.
  r = run_cli({"--db", db, "delete", "--account", kAccount, "--key-id", key_id});
  others.push_back(r);
  REQUIRE(r.code == 0);
  Json deleted = Json::parse(r.out);
  CHECK(deleted.at("key_id") == key_id);
  CHECK(deleted.at("deleted") == true);

  r = run_cli({"--db", db, "verify", public_key, secret});
  others.push_back(r);
  CHECK(r.code == 1);
  CHECK(Json::parse(r.out).at("code") == "not_found");

  r = run_cli({"--db", db, "list", "--account", kAccount});
  others.push_back(r);
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).empty());

  // Deleting again: no such key.
  r = run_cli({"--db", db, "delete", "--account", kAccount, "--key-id", key_id});
  others.push_back(r);
  CHECK(r.code == 3);

  const std::string secret_body = secret.substr(3);  // without "sk_"
  for (const Run& o : others) {
    CHECK_FALSE(contains(o.out, secret_body));
    CHECK_FALSE(contains(o.err, secret_body));
  }
}

TEST_CASE("cli: verify - reads one line of at most 1024 bytes and leaves the rest", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json k = create_key(db);
  const std::string token =
      k.at("public_key").get<std::string>() + ":" + k.at("secret_key").get<std::string>();
  // What follows the first line stays in the pipe for the next reader.
  const Run r = apikeys_test::run_program({"/bin/sh", "-c", "\"$0\" \"$@\"; echo \"rc=$?\"; cat",
                                           APIKEYS_CLI_PATH, "--db", db, "verify", "-"},
                                          {"APIKEYS_PEPPER=" + kPepperHex},
                                          token + "\nthe rest of the input\n");
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(contains(r.out, "\"code\": \"valid\""));
  CHECK(contains(r.out, "rc=0\nthe rest of the input\n"));
  // A first line longer than 1024 bytes is not a token.
  const Run long_line =
      run_cli({"--db", db, "verify", "-"}, kPepperHex, token + std::string(1100, 'a') + "\n");
  CHECK(long_line.code == 1);
  CHECK(Json::parse(long_line.out).at("code") == "malformed");
}

TEST_CASE("cli: newest key first, expiry shown", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json first = create_key(db);
  const Json second = create_key(db, kAccount, {"--expires-in-days", "30"});
  const std::string expires_at = second.at("expires_at").get<std::string>();
  CHECK(expires_at.size() == 24);  // 2026-11-25T05:59:32.123Z
  CHECK(expires_at.back() == 'Z');
  CHECK(expires_at > second.at("created_at").get<std::string>());

  const Run r = run_cli({"--db", db, "list", "--account", kAccount});
  REQUIRE(r.code == 0);
  const Json listed = Json::parse(r.out);
  REQUIRE(listed.size() == 2);
  CHECK(listed[0].at("key_id") == second.at("key_id"));
  CHECK(listed[0].at("expires_at") == expires_at);
  CHECK(listed[1].at("key_id") == first.at("key_id"));

  const Run other = run_cli({"--db", db, "list", "--account", kOtherAccount});
  REQUIRE(other.code == 0);
  CHECK(Json::parse(other.out).empty());
}

TEST_CASE("cli: another account cannot revoke or delete a key", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json created = create_key(db);
  const std::string key_id = created.at("key_id").get<std::string>();

  Run r = run_cli({"--db", db, "revoke", "--account", kOtherAccount, "--key-id", key_id});
  CHECK(r.code == 3);
  CHECK_FALSE(r.err.empty());
  CHECK(r.out.empty());

  r = run_cli({"--db", db, "delete", "--account", kOtherAccount, "--key-id", key_id});
  CHECK(r.code == 3);
  CHECK_FALSE(r.err.empty());

  r = run_cli({"--db", db, "revoke", "--account", kAccount, "--key-id",
               "00000000-0000-4000-8000-000000000000"});
  CHECK(r.code == 3);

  // The key is untouched.
  r = run_cli({"--db", db, "verify", created.at("public_key").get<std::string>(),
               created.at("secret_key").get<std::string>()});
  CHECK(r.code == 0);
}

TEST_CASE("cli: the pepper is required and checked", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::vector<std::string> create{"--db",   db,        "create", "--account",
                                        kAccount, "--title", "t"};

  SECTION("missing") {
    const Run r = run_cli(create, std::nullopt);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "APIKEYS_PEPPER"));
    CHECK(r.out.empty());
  }
  SECTION("empty") { CHECK(run_cli(create, std::string()).code == 2); }
  SECTION("too short (31 bytes)") {
    const Run r = run_cli(create, kPepperHex.substr(0, 62));
    CHECK(r.code == 2);
    CHECK_FALSE(r.err.empty());
    CHECK_FALSE(contains(r.err, kPepperHex.substr(0, 62)));
  }
  SECTION("not hex") {
    std::string bad = kPepperHex;
    bad[10] = 'g';
    const Run r = run_cli(create, bad);
    CHECK(r.code == 2);
    CHECK_FALSE(contains(r.err, bad));
  }
  SECTION("odd number of digits") { CHECK(run_cli(create, kPepperHex + "a").code == 2); }
  SECTION("surrounding white space is ignored") {
    CHECK(run_cli(create, "  " + kPepperHex + "\n").code == 0);
  }
  SECTION("--pepper-file") {
    const std::string file = dir.file("pepper.hex");
    { std::ofstream(file) << "\n  " << kPepperHex << "  \n"; }
    std::vector<std::string> args{"--db",      db,       "--pepper-file", file, "create",
                                  "--account", kAccount, "--title",       "t"};
    const Run created = run_cli(args, std::nullopt);
    REQUIRE(created.code == 0);
    // Same pepper through the environment: the key verifies.
    const Json k = Json::parse(created.out);
    const Run v = run_cli({"--db", db, "verify", k.at("public_key").get<std::string>(),
                           k.at("secret_key").get<std::string>()});
    CHECK(v.code == 0);

    // A different pepper: the same key is a wrong secret.
    const Run w = run_cli({"--db", db, "verify", k.at("public_key").get<std::string>(),
                           k.at("secret_key").get<std::string>()},
                          kOtherPepperHex);
    CHECK(w.code == 1);
    CHECK(Json::parse(w.out).at("code") == "wrong_secret");
  }
  SECTION("a pepper that cannot be random") {
    // Well-formed hex of 32 bytes or more, refused by the library's pepper check.
    for (const std::string& weak :
         {std::string(64, '0'), std::string(64, 'f'), std::string(128, '0'),
          std::string("0001000100010001000100010001000100010001000100010001000100010001"),
          kPepperHex.substr(0, 32) + kPepperHex.substr(0, 32)}) {
      INFO(weak);
      const Run r = run_cli(create, weak);
      CHECK(r.code == 2);
      CHECK(r.out.empty());
      CHECK(contains(r.err, "pepper"));
      CHECK_FALSE(contains(r.err, weak));
      CHECK_FALSE(contains(r.err, weak.substr(0, 16)));
      CHECK_FALSE(contains(r.err, hex_decode(weak)));
      // Refused before the database is opened: nothing was made.
      CHECK_FALSE(fs::exists(db));
    }
    const std::string file = dir.file("zero.hex");
    { std::ofstream(file) << std::string(64, '0') << "\n"; }
    const Run r = run_cli(
        {"--db", db, "--pepper-file", file, "create", "--account", kAccount, "--title", "t"},
        std::nullopt);
    CHECK(r.code == 2);
    CHECK_FALSE(contains(r.err, std::string(16, '0')));
    CHECK_FALSE(fs::exists(db));
  }
  SECTION("--pepper-file that does not exist") {
    std::vector<std::string> args{"--db",           db,        "--pepper-file",
                                  dir.file("nope"), "create",  "--account",
                                  kAccount,         "--title", "t"};
    const Run r = run_cli(args, std::nullopt);
    CHECK(r.code == 2);
    CHECK_FALSE(r.err.empty());
  }
  SECTION("--pepper-file overrides APIKEYS_PEPPER") {
    const std::string file = dir.file("pepper.hex");
    { std::ofstream(file) << kPepperHex << "\n"; }
    // The environment holds another pepper: the file's makes the key.
    const Run created = run_cli(
        {"--db", db, "--pepper-file", file, "create", "--account", kAccount, "--title", "t"},
        kOtherPepperHex);
    REQUIRE(created.code == 0);
    const Json k = Json::parse(created.out);
    const std::string pk = k.at("public_key").get<std::string>();
    const std::string sk = k.at("secret_key").get<std::string>();
    CHECK(run_cli({"--db", db, "verify", pk, sk}, kPepperHex).code == 0);
    const Run other = run_cli({"--db", db, "verify", pk, sk}, kOtherPepperHex);
    CHECK(other.code == 1);
    CHECK(Json::parse(other.out).at("code") == "wrong_secret");
    CHECK(run_cli({"--db", db, "--pepper-file", file, "verify", pk, sk}, kOtherPepperHex).code ==
          0);
  }
  SECTION("--pepper-file over 4096 bytes is refused unread and unshown") {
    // A valid pepper, then white space up to 4097 bytes: only the size is wrong.
    const std::string file = dir.file("long-pepper-file");
    std::string content = kPepperHex + "\n";
    content.resize(4097, ' ');
    { std::ofstream(file) << content; }
    const Run r = run_cli(
        {"--db", db, "--pepper-file", file, "create", "--account", kAccount, "--title", "t"},
        std::nullopt);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "4096"));
    CHECK_FALSE(contains(r.err, file));
    CHECK_FALSE(contains(r.err, kPepperHex.substr(0, 16)));
    CHECK(r.out.empty());
    CHECK_FALSE(fs::exists(db));
    // 4096 bytes exactly is read.
    content.resize(4096);
    { std::ofstream(file) << content; }
    CHECK(run_cli(
              {"--db", db, "--pepper-file", file, "create", "--account", kAccount, "--title", "t"},
              std::nullopt)
              .code == 0);
  }
  SECTION("--pepper-file with a short pepper") {
    const std::string file = dir.file("short.hex");
    { std::ofstream(file) << kPepperHex.substr(0, 40); }
    std::vector<std::string> args{"--db",      db,       "--pepper-file", file, "create",
                                  "--account", kAccount, "--title",       "t"};
    CHECK(run_cli(args, std::nullopt).code == 2);
  }
}

TEST_CASE("cli: bad usage exits 2 with a message", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  auto create = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args{"--db", db, "create", "--account", kAccount};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(args);
  };
  auto expect_usage = [](const Run& r) {
    INFO("stdout: " << r.out << "\nstderr: " << r.err);
    CHECK(r.code == 2);
    CHECK_FALSE(r.err.empty());
    CHECK(r.out.empty());
  };

  SECTION("no command") { expect_usage(run_cli({"--db", db})); }
  SECTION("unknown command") { expect_usage(run_cli({"--db", db, "rename"})); }
  SECTION("no --db") { expect_usage(run_cli({"list", "--account", kAccount})); }
  SECTION("missing --account") { expect_usage(run_cli({"--db", db, "create", "--title", "t"})); }
  SECTION("missing --title") { expect_usage(create({})); }
  SECTION("missing --key-id") {
    expect_usage(run_cli({"--db", db, "revoke", "--account", kAccount}));
  }
  SECTION("bad account UUID") {
    expect_usage(run_cli({"--db", db, "create", "--account", "not-a-uuid", "--title", "t"}));
  }
  SECTION("bad key UUID") {
    create_key(db);
    expect_usage(run_cli({"--db", db, "revoke", "--account", kAccount, "--key-id", "1234"}));
  }
  SECTION("empty title") {
    expect_usage(create({"--title", ""}));
    CHECK_FALSE(fs::exists(db));  // a rejected request creates no database
  }
  SECTION("blank title") { expect_usage(create({"--title", "   \t "})); }
  SECTION("title too long") { expect_usage(create({"--title", std::string(256, 'x')})); }
  SECTION("title with a control character") { expect_usage(create({"--title", "a\x01z"})); }
  SECTION("expires in 0 days") { expect_usage(create({"--title", "t", "--expires-in-days", "0"})); }
  SECTION("expiry days are decimal digits only") {
    // Never read as octal ("010" is not 8) or hex, nor with a sign or white space.
    for (const char* days : {"0x10", "+7", "-7", " 7", "7 ", "1e2", "7.0", ""}) {
      INFO(days);
      expect_usage(create({"--title", "t", "--expires-in-days", days}));
    }
    CHECK_FALSE(fs::exists(db));
    // A leading zero is still decimal: 010 days is ten days, not eight.
    const Run r = create({"--title", "t", "--expires-in-days", "010"});
    REQUIRE(r.code == 0);
    const Json k = Json::parse(r.out);
    const auto millis = [](const std::string& iso) {  // "2026-11-25T05:59:32.123Z"
      std::tm tm{};
      std::istringstream in(iso.substr(0, 19));
      in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%S");
      return static_cast<std::int64_t>(timegm(&tm)) * 1000 + std::stoi(iso.substr(20, 3));
    };
    const std::int64_t life_ms = millis(k.at("expires_at").get<std::string>()) -
                                 millis(k.at("created_at").get<std::string>());
    CHECK(life_ms == 10LL * 24 * 3600 * 1000);
  }
  SECTION("expires in 366 days") {
    expect_usage(create({"--title", "t", "--expires-in-days", "366"}));
  }
  SECTION("expires in a non-number") {
    expect_usage(create({"--title", "t", "--expires-in-days", "soon"}));
  }
  SECTION("verify without a key") { expect_usage(run_cli({"--db", db, "verify"})); }
}

TEST_CASE("cli: boundary expiries are accepted", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  CHECK(create_key(db, kAccount, {"--expires-in-days", "1"}).at("expires_at").is_string());
  CHECK(create_key(db, kAccount, {"--expires-in-days", "365"}).at("expires_at").is_string());
  // Surrounding white space in a title is trimmed, not an error.
  const Run r = run_cli({"--db", db, "create", "--account", kAccount, "--title", "  padded  "});
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).at("title") == "padded");
}

namespace {

// Runs the CLI with `args` (argv[1..]) and the test pepper, its stdout a pipe whose
// reading end is closed before it starts (a `| head` that has exited), and SIGPIPE at
// its default disposition (a test runner may ignore it, and exec keeps that). Returns
// the exit status (128 + signal when killed) and stderr.
Run run_cli_stdout_closed(const std::vector<std::string>& args) {
  std::vector<std::string> arg_store{APIKEYS_CLI_PATH};
  arg_store.insert(arg_store.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : arg_store) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string env_store = "APIKEYS_PEPPER=" + kPepperHex;
  char* envp[] = {env_store.data(), nullptr};
  int out[2];
  int err[2];
  REQUIRE(pipe2(out, O_CLOEXEC) == 0);
  REQUIRE(pipe2(err, O_CLOEXEC) == 0);
  close(out[0]);  // nobody will ever read the child's stdout
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    signal(SIGPIPE, SIG_DFL);
    const int in = open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0) _exit(126);
    execve(argv[0], argv.data(), envp);
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  Run r;
  char buf[4096];
  for (ssize_t n; (n = read(err[0], buf, sizeof buf)) != 0;) {
    if (n > 0) r.err.append(buf, static_cast<std::size_t>(n));
    if (n < 0 && errno != EINTR) break;
  }
  close(err[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace

TEST_CASE("cli: output that stdout cannot take exits 4 and says so, SIGPIPE or not", "[cli]") {
  // create and rotate store a key, then print its only copy of the secret. When stdout
  // is a pipe nobody reads any more (a closed `| head`), the write must fail as an
  // error the caller hears about (exit 4 and a message on stderr), not kill the
  // process with SIGPIPE after the key was stored and before anyone was told.
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json key = create_key(db);
  const std::string key_id = key["key_id"];
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--db", db, "create", "--account", kAccount, "--title", "t"},
        std::vector<std::string>{"--db", db, "rotate", "--account", kAccount, "--key-id",
                                 key_id}}) {
    INFO(args[2]);
    const Run r = run_cli_stdout_closed(args);
    INFO("stderr: " << r.err);
    CHECK(r.code == 4);
    CHECK(contains(r.err, "could not be written to stdout"));
  }
  // scan stops and says why.
  const std::string tree = dir.file("tree");
  fs::create_directories(tree);
  std::ofstream(tree + "/found.txt") << key.at("public_key").get<std::string>() << "\n";
  const Run r = run_cli_stdout_closed({"scan", tree});
  INFO("stderr: " << r.err);
  CHECK(r.code == 4);
  CHECK(contains(r.err, "scan: cannot write to stdout"));
}

TEST_CASE("cli: storage failures exit 4", "[cli]") {
  TempDir dir;
  // A path below a regular file cannot be created, even by root.
  const std::string file = dir.file("plain-file");
  { std::ofstream(file) << "not a directory\n"; }
  const std::string db = file + "/keys.db";

  Run r = run_cli({"--db", db, "create", "--account", kAccount, "--title", "t"});
  CHECK(r.code == 4);
  CHECK_FALSE(r.err.empty());
  CHECK(r.out.empty());

  r = run_cli({"--db", db, "list", "--account", kAccount});
  CHECK(r.code == 4);

  // A file that is not a SQLite database.
  r = run_cli({"--db", file, "list", "--account", kAccount});
  CHECK(r.code == 4);
  CHECK_FALSE(r.err.empty());

  // Commands other than create do not make a new database at a mistyped path.
  const std::string missing = dir.file("missing.db");
  r = run_cli({"--db", missing, "verify", "pk_x:sk_y"});
  CHECK(r.code == 4);
  CHECK_FALSE(fs::exists(missing));

  // A database that opens, with a key whose row is damaged: verify answers `error`
  // (printed, like any other code) and exits 4, never 0 or 1.
  const std::string good = dir.file("keys.db");
  const Json k = create_key(good);
  {
    SQLite::Database raw(good, SQLite::OPEN_READWRITE);
    SQLite::Statement damage(raw, "UPDATE api_keys SET digest = x'00' WHERE key_id = ?");
    damage.bind(1, k.at("key_id").get<std::string>());
    REQUIRE(damage.exec() == 1);
  }
  r = run_cli({"--db", good, "verify", k.at("public_key").get<std::string>(),
               k.at("secret_key").get<std::string>()});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.code == 4);
  CHECK(Json::parse(r.out).at("code") == "error");
  CHECK_FALSE(contains(r.out + r.err, k.at("secret_key").get<std::string>()));
}

TEST_CASE("cli: a file that is not an apikeys database is refused and left unchanged", "[cli]") {
  TempDir dir;
  for (const auto& file : apikeys_test::make_foreign_files(dir)) {
    INFO(file.what);
    const std::string before = apikeys_test::file_bytes(file.path);
    Run r = run_cli({"--db", file.path, "list", "--account", kAccount});
    CHECK(r.code == 4);
    CHECK(contains(r.err, "not an apikeys database"));
    CHECK(r.out.empty());
    r = run_cli({"--db", file.path, "create", "--account", kAccount, "--title", "t"});
    CHECK(r.code == 4);
    CHECK(r.out.empty());  // no key made, no secret shown
    CHECK(apikeys_test::file_bytes(file.path) == before);
    CHECK_FALSE(fs::exists(file.path + "-wal"));
    CHECK_FALSE(fs::exists(file.path + "-shm"));
  }
}

TEST_CASE("cli: only create and import initialise an empty file", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("empty.db");
  apikeys_test::make_empty_file(db);
  // Every command that reads or changes keys but makes none (import: below).
  const std::vector<std::string> key{"--account", kAccount, "--key-id", kOtherAccount};
  const auto on_key = [&](const char* command, std::vector<std::string> more = {}) {
    std::vector<std::string> args{"--db", db, command};
    args.insert(args.end(), key.begin(), key.end());
    args.insert(args.end(), more.begin(), more.end());
    return args;
  };
  const std::vector<std::vector<std::string>> others{
      {"--db", db, "list", "--account", kAccount},
      {"--db", db, "verify", "pk_x:sk_y"},
      on_key("get"),
      on_key("update", {"--title", "t"}),
      on_key("disable"),
      on_key("enable"),
      on_key("rotate"),
      on_key("revoke"),
      on_key("delete"),
      on_key("credits", {"--set", "5"}),
      {"--db", db, "revoke-all", "--account", kAccount},
      {"--db", db, "audit", "--account", kAccount},
      {"--db", db, "audit-prune", "--before", "2026-01-01T00:00:00Z"},
      {"--db", db, "peppers"},
  };
  for (const auto& args : others) {
    INFO(args[2]);
    const Run r = run_cli(args);
    CHECK(r.code == 4);
    CHECK_FALSE(r.err.empty());
    CHECK(fs::file_size(db) == 0);
    CHECK_FALSE(fs::exists(db + "-wal"));
    CHECK_FALSE(fs::exists(db + "-journal"));
  }
  const Json created = create_key(db);
  const Run r = run_cli({"--db", db, "list", "--account", kAccount});
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).at(0).at("key_id") == created.at("key_id"));
}

TEST_CASE("cli: presented secrets are never echoed", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json created = create_key(db);
  const std::string public_key = created.at("public_key").get<std::string>();
  const std::string secret = created.at("secret_key").get<std::string>();
  const std::string wrong = "sk_WrongWrongWrongWrongWrongWrong12";  // 32 base62 characters

  Run r = run_cli({"--db", db, "verify", public_key, wrong});
  CHECK(r.code == 1);
  CHECK(Json::parse(r.out).at("code") == "wrong_secret");
  CHECK_FALSE(contains(r.out + r.err, "WrongWrong"));

  r = run_cli({"--db", db, "verify", public_key + ":" + wrong});
  CHECK(r.code == 1);
  CHECK_FALSE(contains(r.out + r.err, "WrongWrong"));

  // Malformed input is an ordinary rejection, not echoed either.
  r = run_cli({"--db", db, "verify", public_key, "sk_short-Secret!"});
  CHECK(r.code == 1);
  CHECK(Json::parse(r.out).at("code") == "malformed");
  CHECK_FALSE(contains(r.out + r.err, "short-Secret"));

  // Too many arguments: the parse error does not list them.
  r = run_cli({"--db", db, "verify", public_key, secret, wrong});
  CHECK(r.code == 2);
  CHECK_FALSE(contains(r.out + r.err, "WrongWrong"));
  CHECK_FALSE(contains(r.out + r.err, secret.substr(3)));

  // A value CLI11 quotes in its message ("Could not convert: ... = value") is redacted.
  r = run_cli(
      {"--db", db, "create", "--account", kAccount, "--title", "t", "--expires-in-days", secret});
  CHECK(r.code == 2);
  CHECK(contains(r.err, "--expires-in-days"));
  CHECK_FALSE(contains(r.out + r.err, secret.substr(3)));
  // Even a value that is the redaction marker itself (this once looped forever).
  r = run_cli({"--db", db, "create", "--account", kAccount, "--title", "t", "--expires-in-days",
               "<not shown>"});
  CHECK(r.code == 2);
}

TEST_CASE("cli: --help lists every command, --version prints the library version", "[cli]") {
  Run r = run_cli({"--help"});
  CHECK(r.code == 0);
  for (const char* command :
       {"create", "list", "get", "update", "disable", "enable", "rotate", "revoke", "revoke-all",
        "delete", "verify", "import", "peppers", "scan", "--brand", "--legacy-pepper-file"}) {
    INFO(command);
    CHECK(contains(r.out, command));
  }
  CHECK(contains(r.out, "--db"));

  r = run_cli({"--version"});
  CHECK(r.code == 0);
  CHECK(r.out == std::string(apikeys::version()) + "\n");

  r = run_cli({"create", "--help"});
  CHECK(r.code == 0);
  CHECK(contains(r.out, "--expires-in-days"));
  CHECK(contains(r.out, "--metadata"));
  CHECK(contains(r.out, "--scope"));

  r = run_cli({"update", "--help"});
  CHECK(r.code == 0);
  for (const char* option :
       {"--clear-metadata", "--clear-scopes", "--no-expiry", "--expected-version"}) {
    INFO(option);
    CHECK(contains(r.out, option));
  }
}

TEST_CASE("cli: --help lists the rate-limit and credit options and the credits command", "[cli]") {
  Run r = run_cli({"--help"});
  CHECK(r.code == 0);
  CHECK(contains(r.out, "credits"));
  for (const char* command : {"create", "update"}) {
    r = run_cli({command, "--help"});
    CHECK(r.code == 0);
    for (const char* option : {"--rate-limit", "--credits", "--refill-amount", "--refill-interval",
                               "--refill-mode", "--refill-cap"}) {
      INFO(command << ' ' << option);
      CHECK(contains(r.out, option));
    }
  }
  r = run_cli({"update", "--help"});
  for (const char* option : {"--clear-rate-limits", "--no-credits", "--no-refill"}) {
    INFO(option);
    CHECK(contains(r.out, option));
  }
  r = run_cli({"credits", "--help"});
  CHECK(r.code == 0);
  CHECK(contains(r.out, "--set"));
  CHECK(contains(r.out, "--add"));
  r = run_cli({"verify", "--help"});
  CHECK(contains(r.out, "--cost"));
}

TEST_CASE("cli: a revoke by another process reaches a cached validator within 1 s", "[cli]") {
  using Clock = std::chrono::steady_clock;
  TempDir dir;
  const std::string db = dir.file("keys.db");

  const std::string pepper = hex_decode(kPepperHex);
  auto store = std::make_shared<apikeys::SqliteStore>(db);
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(pepper);
  apikeys::KeyManagerOptions options;
  options.validation.cache = std::make_shared<apikeys::MemoryCache>();
  REQUIRE(options.validation.revision_poll_interval == std::chrono::milliseconds(250));
  apikeys::KeyManager manager(store, hasher, options);

  const apikeys::Uuid account = *apikeys::Uuid::parse(kAccount);
  apikeys::CreateRequest request;
  request.title = "cross-process";
  const apikeys::CreatedKey key = manager.create(account, request);
  const std::string public_key = key.info.public_key;
  const std::string secret(key.secret_key.reveal());

  REQUIRE(manager.validate(public_key, secret).code == apikeys::ValidationCode::valid);
  REQUIRE(manager.validate(public_key, secret).code == apikeys::ValidationCode::valid);  // cached

  const Run r = run_cli(
      {"--db", db, "revoke", "--account", kAccount, "--key-id", key.info.key_id.to_string()});
  REQUIRE(r.code == 0);
  const auto revoked_at = Clock::now();

  apikeys::ValidationCode code = apikeys::ValidationCode::valid;
  while (Clock::now() - revoked_at < std::chrono::milliseconds(1500)) {
    code = manager.validate(public_key, secret).code;
    if (code != apikeys::ValidationCode::valid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto elapsed =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - revoked_at);
  INFO("elapsed ms: " << elapsed.count());
  REQUIRE(code == apikeys::ValidationCode::revoked);
  REQUIRE(elapsed < std::chrono::milliseconds(1000));
}

namespace {

// Runs the CLI, REQUIREs exit 0, and returns its parsed output.
Json run_json(const std::vector<std::string>& args) {
  const Run r = run_cli(args);
  INFO("args: " << args.size() << ", stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.code == 0);
  return Json::parse(r.out);
}

// Every field a printed key carries, with its JSON type.
void check_key_fields(const Json& k) {
  INFO(k.dump());
  REQUIRE(k.is_object());
  for (const char* f :
       {"key_id", "public_key", "title", "description", "status", "created_at", "updated_at"}) {
    INFO(f);
    CHECK(k.at(f).is_string());
  }
  for (const char* f : {"expires_at", "last_used_at", "rotated_from", "rotated_to"}) {
    INFO(f);
    CHECK((k.at(f).is_null() || k.at(f).is_string()));
  }
  CHECK(k.at("version").is_number_unsigned());
  CHECK(k.at("metadata").is_object());
  CHECK(k.at("scopes").is_array());
  CHECK(k.at("lineage_id").is_string());
  CHECK(k.at("rate_limits").is_array());
  CHECK((k.at("credits").is_null() || k.at("credits").is_object()));
  CHECK_FALSE(k.contains("digest"));
}

std::vector<std::string> key_args(const std::string& db, const std::string& command,
                                  const std::string& key_id,
                                  const std::string& account = kAccount) {
  return {"--db", db, command, "--account", account, "--key-id", key_id};
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("cli: create with metadata and scopes, and the key fields every command prints",
          "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json created =
      create_key(db, kAccount,
                 {"--metadata", R"({"team":"billing","limits":{"rps":10}})", "--scope",
                  "invoices:read", "--scope", "billing.*", "--scope", "invoices:read"});
  check_key_fields(created);
  CHECK(created.at("secret_key").get<std::string>().rfind("sk_", 0) == 0);
  CHECK(created.at("metadata") == Json::parse(R"({"team":"billing","limits":{"rps":10}})"));
  CHECK(created.at("scopes") == Json::array({"billing.*", "invoices:read"}));  // sorted, unique
  CHECK(created.at("version") == 1);
  CHECK(created.at("updated_at") == created.at("created_at"));
  CHECK(created.at("rotated_from").is_null());
  CHECK(created.at("rotated_to").is_null());
  const std::string key_id = created.at("key_id").get<std::string>();

  // A key with neither: metadata {} and scopes [].
  const Json plain = create_key(db);
  CHECK(plain.at("metadata") == Json::object());
  CHECK(plain.at("scopes") == Json::array());

  const Json listed = run_json({"--db", db, "list", "--account", kAccount});
  REQUIRE(listed.size() == 2);
  for (const Json& k : listed) check_key_fields(k);
  CHECK(listed[1].at("key_id") == key_id);
  CHECK(listed[1].at("metadata") == created.at("metadata"));
  CHECK(listed[1].at("scopes") == created.at("scopes"));

  const Json got = run_json(key_args(db, "get", key_id));
  check_key_fields(got);
  CHECK(got.at("key_id") == key_id);
  CHECK(got.at("metadata") == created.at("metadata"));
  CHECK(got.at("scopes") == created.at("scopes"));
  CHECK_FALSE(got.contains("secret_key"));

  // revoke prints the whole key too (it still has key_id and status, as before).
  const Json revoked = run_json(key_args(db, "revoke", key_id));
  check_key_fields(revoked);
  CHECK(revoked.at("status") == "revoked");
  CHECK(revoked.at("version") == 2);
}

TEST_CASE("cli: bad metadata and scopes are refused before anything is written", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  auto create = [&](const std::vector<std::string>& extra) {
    return run_cli(plus({"--db", db, "create", "--account", kAccount, "--title", "t"}, extra));
  };
  for (const auto& extra : std::vector<std::vector<std::string>>{
           {"--metadata", "[1,2]"},
           {"--metadata", "{\"a\":1,\"a\":2}"},
           {"--metadata", "{not json"},
           {"--metadata", "{\"a\":\"" + std::string(4100, 'x') + "\"}"},
           {"--scope", "Invoices"},
           {"--scope", ""},
           {"--scope", "a..b"},
           {"--scope", std::string(129, 'a')},
       }) {
    INFO(extra[0] << " " << extra[1].substr(0, 40));
    const Run r = create(extra);
    CHECK(r.code == 2);
    CHECK(r.out.empty());
    CHECK_FALSE(r.err.empty());
    if (extra[1].size() > 8) CHECK_FALSE(contains(r.err, extra[1]));
    CHECK_FALSE(fs::exists(db));
  }
  // A secret key or the pepper where it would be stored in plain text.
  const std::string sk = "sk_abcdefghijklmnopqrstuvwxyz012345";  // also a valid scope
  for (const auto& extra : std::vector<std::vector<std::string>>{
           {"--scope", sk},
           {"--scope", kPepperHex},
           {"--metadata", "{\"k\":\"" + sk + "\"}"},
           {"--metadata", "{\"k\":\"" + kPepperHex + "\"}"},
           // Spelt with JSON escapes, which any reader of the metadata decodes.
           {"--metadata", "{\"k\":\"\\u0073k_" + sk.substr(3) + "\"}"},
           {"--metadata", "{\"k\":\"sk\\u005F" + sk.substr(3) + "\"}"},
           {"--metadata",  // its 11th digit, '5', as \u0035
            "{\"k\":\"" + kPepperHex.substr(0, 10) + "\\u0035" + kPepperHex.substr(11) + "\"}"},
       }) {
    INFO(extra[0]);
    const Run r = create(extra);
    CHECK(r.code == 2);
    CHECK(contains(r.err, extra[0]));
    CHECK_FALSE(contains(r.out + r.err, sk.substr(3)));
    CHECK_FALSE(contains(r.out + r.err, kPepperHex));
    CHECK_FALSE(fs::exists(db));
  }
}

TEST_CASE("cli: update changes each field, version by version", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json created = create_key(db, kAccount,
                                  {"--description", "first", "--metadata", R"({"a":1})", "--scope",
                                   "a.read", "--expires-in-days", "10"});
  const std::string key_id = created.at("key_id").get<std::string>();
  const auto update = [&](const std::vector<std::string>& extra) {
    return run_json(plus(key_args(db, "update", key_id), extra));
  };

  Json k = update({"--title", "  renamed  "});
  check_key_fields(k);
  CHECK(k.at("title") == "renamed");
  CHECK(k.at("description") == "first");  // left as it was
  CHECK(k.at("metadata") == Json::parse(R"({"a":1})"));
  CHECK(k.at("scopes") == Json::array({"a.read"}));
  CHECK(k.at("expires_at") == created.at("expires_at"));
  CHECK(k.at("version") == 2);
  CHECK(k.at("updated_at").get<std::string>() >= created.at("updated_at").get<std::string>());

  k = update({"--description", "second", "--metadata", R"({"b":[1,2]})"});
  CHECK(k.at("description") == "second");
  CHECK(k.at("metadata") == Json::parse(R"({"b":[1,2]})"));
  CHECK(k.at("version") == 3);

  k = update({"--scope", "b.write", "--scope", "a.*"});  // replaces the set
  CHECK(k.at("scopes") == Json::array({"a.*", "b.write"}));

  k = update({"--clear-metadata", "--clear-scopes"});
  CHECK(k.at("metadata") == Json::object());
  CHECK(k.at("scopes") == Json::array());

  k = update({"--no-expiry"});
  CHECK(k.at("expires_at").is_null());
  k = update({"--expires-in-days", "30"});
  CHECK(k.at("expires_at").is_string());
  CHECK(k.at("expires_at").get<std::string>() > created.at("expires_at").get<std::string>());

  k = update({"--description", ""});
  CHECK(k.at("description") == "");
  CHECK(k.at("version") == 8);

  // The expected version: the current one applies, a stale one is a conflict (exit 5)
  // that writes nothing.
  k = update({"--title", "checked", "--expected-version", "8"});
  CHECK(k.at("title") == "checked");
  CHECK(k.at("version") == 9);
  Run r = run_cli(
      plus(key_args(db, "update", key_id), {"--title", "stale", "--expected-version", "8"}));
  CHECK(r.code == 5);
  CHECK(r.out.empty());
  CHECK(contains(r.err, "conflict"));
  k = run_json(key_args(db, "get", key_id));
  CHECK(k.at("title") == "checked");
  CHECK(k.at("version") == 9);

  // The values follow create's rules.
  r = run_cli(plus(key_args(db, "update", key_id), {"--title", ""}));
  CHECK(r.code == 2);
  r = run_cli(plus(key_args(db, "update", key_id), {"--metadata", "[]"}));
  CHECK(r.code == 2);
  r = run_cli(plus(key_args(db, "update", key_id), {"--scope", "A"}));
  CHECK(r.code == 2);
  r = run_cli(plus(key_args(db, "update", key_id), {"--expires-in-days", "366"}));
  CHECK(r.code == 2);
  CHECK(run_json(key_args(db, "get", key_id)).at("version") == 9);

  // Another account's key, or none: exit 3.
  r = run_cli(plus(key_args(db, "update", key_id, kOtherAccount), {"--title", "x"}));
  CHECK(r.code == 3);
  r = run_cli(
      plus(key_args(db, "update", "00000000-0000-4000-8000-000000000000"), {"--title", "x"}));
  CHECK(r.code == 3);
}

TEST_CASE("cli: update usage errors", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string key_id = create_key(db).at("key_id").get<std::string>();
  const auto expect_usage = [&](const std::vector<std::string>& extra) {
    const Run r = run_cli(plus(key_args(db, "update", key_id), extra));
    INFO("stdout: " << r.out << "\nstderr: " << r.err);
    CHECK(r.code == 2);
    CHECK(r.out.empty());
    CHECK_FALSE(r.err.empty());
  };
  SECTION("nothing to change") { expect_usage({}); }
  SECTION("only --expected-version") { expect_usage({"--expected-version", "1"}); }
  SECTION("--scope with --clear-scopes") { expect_usage({"--scope", "a", "--clear-scopes"}); }
  SECTION("--expires-in-days with --no-expiry") {
    expect_usage({"--expires-in-days", "3", "--no-expiry"});
  }
  SECTION("--metadata with --clear-metadata") {
    expect_usage({"--metadata", "{}", "--clear-metadata"});
  }
  SECTION("bad --expected-version") {
    for (const char* v : {"0", "-1", "x", "1.5", "99999999999999999999999"}) {
      INFO(v);
      expect_usage({"--title", "t", "--expected-version", v});
    }
  }
  SECTION("missing --key-id") {
    const Run r = run_cli({"--db", db, "update", "--account", kAccount, "--title", "t"});
    CHECK(r.code == 2);
  }
  SECTION("a secret as the new title or metadata") {
    const std::string sk = "sk_abcdefghijklmnopqrstuvwxyz012345";
    for (const auto& extra :
         std::vector<std::vector<std::string>>{{"--title", sk},
                                               {"--description", sk},
                                               {"--metadata", "{\"s\":\"" + sk + "\"}"},
                                               {"--scope", sk}}) {
      const Run r = run_cli(plus(key_args(db, "update", key_id), extra));
      CHECK(r.code == 2);
      CHECK_FALSE(contains(r.out + r.err, sk.substr(3)));
    }
    // A branded secret (a valid checksum) too, as a whole title or inside one.
    apikeys::CsprngKeyGenerator generator;
    const apikeys::KeyPair branded = generator.generate(apikeys::KeyFormat::branded("acme"));
    const std::string bsk(branded.secret_key.reveal());
    for (const std::string& title : {bsk, "old key: " + bsk}) {
      const Run r = run_cli(plus(key_args(db, "update", key_id), {"--title", title}));
      CHECK(r.code == 2);
      CHECK_FALSE(contains(r.out + r.err, bsk.substr(8)));
    }
  }
  CHECK(run_json(key_args(db, "get", key_id)).at("version") == 1);  // nothing written
}

TEST_CASE("cli: disable and enable", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json created = create_key(db);
  const std::string key_id = created.at("key_id").get<std::string>();
  const std::string pk = created.at("public_key").get<std::string>();
  const std::string sk = created.at("secret_key").get<std::string>();

  Json k = run_json(key_args(db, "disable", key_id));
  check_key_fields(k);
  CHECK(k.at("status") == "disabled");
  CHECK(k.at("version") == 2);
  Run r = run_cli({"--db", db, "verify", pk, sk});
  CHECK(r.code == 1);
  Json v = Json::parse(r.out);
  CHECK(v.at("valid") == false);
  CHECK(v.at("code") == "disabled");
  CHECK(v.at("key_id").is_null());
  CHECK(run_json({"--db", db, "list", "--account", kAccount, "--status", "disabled"}).size() == 1);

  // Disabling again changes nothing.
  CHECK(run_json(key_args(db, "disable", key_id)).at("version") == 2);

  k = run_json(key_args(db, "enable", key_id));
  CHECK(k.at("status") == "active");
  CHECK(k.at("version") == 3);
  CHECK(run_cli({"--db", db, "verify", pk, sk}).code == 0);

  // Another account's key: exit 3. A revoked key cannot be enabled or disabled: exit 5.
  CHECK(run_cli(key_args(db, "disable", key_id, kOtherAccount)).code == 3);
  CHECK(run_cli(key_args(db, "enable", key_id, kOtherAccount)).code == 3);
  run_json(key_args(db, "revoke", key_id));
  r = run_cli(key_args(db, "enable", key_id));
  CHECK(r.code == 5);
  CHECK(r.out.empty());
  CHECK(run_cli(key_args(db, "disable", key_id)).code == 5);
  CHECK(run_json(key_args(db, "get", key_id)).at("status") == "revoked");
}

TEST_CASE("cli: rotate prints the new key with its secret and the old key", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json created = create_key(
      db, kAccount,
      {"--metadata", R"({"secret_key":"x"})", "--scope", "a.read", "--expires-in-days", "20"});
  const std::string key_id = created.at("key_id").get<std::string>();
  const std::string old_pk = created.at("public_key").get<std::string>();
  const std::string old_sk = created.at("secret_key").get<std::string>();
  std::vector<Run> runs;

  SECTION("grace 0: the old key expires at once") {
    Run r = run_cli(plus(key_args(db, "rotate", key_id), {"--grace-seconds", "0"}));
    runs.push_back(r);
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    const Json out = Json::parse(r.out);
    const Json& fresh = out.at("new");
    const Json& old = out.at("old");
    check_key_fields(fresh);
    check_key_fields(old);
    const std::string new_sk = fresh.at("secret_key").get<std::string>();
    CHECK(new_sk.rfind("sk_", 0) == 0);
    CHECK(new_sk != old_sk);
    CHECK_FALSE(old.contains("secret_key"));
    CHECK(fresh.at("rotated_from") == key_id);
    CHECK(old.at("key_id") == key_id);
    CHECK(old.at("rotated_to") == fresh.at("key_id"));
    CHECK(fresh.at("title") == created.at("title"));
    CHECK(fresh.at("metadata") == created.at("metadata"));  // whose member is "secret_key"
    CHECK(fresh.at("metadata").at("secret_key") == "x");
    CHECK(fresh.at("scopes") == created.at("scopes"));
    CHECK(fresh.at("expires_at") == created.at("expires_at"));  // the same instant
    CHECK(old.at("expires_at").get<std::string>() <= fresh.at("created_at").get<std::string>());

    r = run_cli({"--db", db, "verify", old_pk, old_sk});
    runs.push_back(r);
    CHECK(r.code == 1);
    CHECK(Json::parse(r.out).at("code") == "expired");
    r = run_cli({"--db", db, "verify", fresh.at("public_key").get<std::string>(), new_sk});
    CHECK(r.code == 0);

    // Rotated once: rotating the old key again is a conflict (exit 5).
    r = run_cli(key_args(db, "rotate", key_id));
    runs.push_back(r);
    CHECK(r.code == 5);
    CHECK(r.out.empty());
    for (const Run& o : runs) CHECK_FALSE(contains(o.err, new_sk.substr(3)));
  }
  SECTION("with a grace period the old key keeps working") {
    const Json out = run_json(plus(key_args(db, "rotate", key_id), {"--grace-seconds", "3600"}));
    CHECK(out.at("old").at("expires_at").is_string());
    CHECK(run_cli({"--db", db, "verify", old_pk, old_sk}).code == 0);
  }
  SECTION("default grace is 0") {
    run_json(key_args(db, "rotate", key_id));
    CHECK(run_cli({"--db", db, "verify", old_pk, old_sk}).code == 1);
  }
  SECTION("usage and state errors") {
    for (const char* g : {"604801", "-1", "soon"}) {
      INFO(g);
      const Run r = run_cli(plus(key_args(db, "rotate", key_id), {"--grace-seconds", g}));
      CHECK(r.code == 2);
      CHECK(r.out.empty());
    }
    CHECK(run_cli(plus(key_args(db, "rotate", key_id), {"--grace-seconds", "604800"})).code == 0);
  }
  SECTION("another account's key, a disabled or revoked key") {
    CHECK(run_cli(key_args(db, "rotate", key_id, kOtherAccount)).code == 3);
    run_json(key_args(db, "disable", key_id));
    CHECK(run_cli(key_args(db, "rotate", key_id)).code == 5);
    run_json(key_args(db, "revoke", key_id));
    CHECK(run_cli(key_args(db, "rotate", key_id)).code == 5);
    CHECK(run_json({"--db", db, "list", "--account", kAccount}).size() == 1);  // none made
  }
}

TEST_CASE("cli: revoke-all revokes every key of one account", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json a = create_key(db);
  create_key(db);
  const Json already = create_key(db);
  run_json(key_args(db, "revoke", already.at("key_id").get<std::string>()));
  const Json other = create_key(db, kOtherAccount);

  Json out = run_json({"--db", db, "revoke-all", "--account", kAccount});
  CHECK(out == Json::parse(R"({"revoked": 2})"));
  for (const Json& k : run_json({"--db", db, "list", "--account", kAccount})) {
    CHECK(k.at("status") == "revoked");
  }
  CHECK(run_cli({"--db", db, "verify", a.at("public_key").get<std::string>(),
                 a.at("secret_key").get<std::string>()})
            .code == 1);
  CHECK(run_cli({"--db", db, "verify", other.at("public_key").get<std::string>(),
                 other.at("secret_key").get<std::string>()})
            .code == 0);
  out = run_json({"--db", db, "revoke-all", "--account", kAccount});
  CHECK(out.at("revoked") == 0);
  CHECK(run_cli({"--db", db, "revoke-all"}).code == 2);
  CHECK(run_cli({"--db", db, "revoke-all", "--account", "x"}).code == 2);
}

TEST_CASE("cli: list in pages, and filtered by status", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(create_key(db).at("key_id").get<std::string>());
  create_key(db, kOtherAccount);
  run_json(key_args(db, "revoke", ids[1]));

  // Walk the pages: every key once, newest first, then next_cursor null.
  std::vector<std::string> seen;
  std::string cursor;
  int pages = 0;
  for (;;) {
    std::vector<std::string> args{"--db", db, "list", "--account", kAccount, "--limit", "2"};
    if (!cursor.empty()) args.insert(args.end(), {"--cursor", cursor});
    const Json page = run_json(args);
    REQUIRE(page.is_object());
    REQUIRE(page.at("keys").is_array());
    CHECK(page.at("keys").size() <= 2);
    for (const Json& k : page.at("keys")) {
      check_key_fields(k);
      seen.push_back(k.at("key_id").get<std::string>());
    }
    ++pages;
    REQUIRE(pages <= 5);
    if (page.at("next_cursor").is_null()) break;
    cursor = page.at("next_cursor").get<std::string>();
  }
  CHECK(pages == 3);
  CHECK(seen == std::vector<std::string>(ids.rbegin(), ids.rend()));

  // Without --limit or --cursor: the array, which --status filters.
  Json all = run_json({"--db", db, "list", "--account", kAccount});
  CHECK(all.is_array());
  CHECK(all.size() == 5);
  Json revoked = run_json({"--db", db, "list", "--account", kAccount, "--status", "revoked"});
  REQUIRE(revoked.is_array());
  REQUIRE(revoked.size() == 1);
  CHECK(revoked[0].at("key_id") == ids[1]);
  CHECK(run_json({"--db", db, "list", "--account", kAccount, "--status", "active"}).size() == 4);
  CHECK(run_json({"--db", db, "list", "--account", kAccount, "--status", "disabled"}).empty());

  // A page with a status filter; a cursor alone (default limit).
  Json page =
      run_json({"--db", db, "list", "--account", kAccount, "--status", "active", "--limit", "10"});
  CHECK(page.at("keys").size() == 4);
  CHECK(page.at("next_cursor").is_null());
  page = run_json({"--db", db, "list", "--account", kAccount, "--limit", "1"});
  const std::string first_cursor = page.at("next_cursor").get<std::string>();
  page = run_json({"--db", db, "list", "--account", kAccount, "--cursor", first_cursor});
  CHECK(page.at("keys").size() == 4);

  // Refused: bad status, limit, or a cursor made for another account or filter.
  const auto expect_usage = [&](const std::vector<std::string>& extra) {
    const Run r = run_cli(plus({"--db", db, "list", "--account", kAccount}, extra));
    INFO("stderr: " << r.err);
    CHECK(r.code == 2);
    CHECK(r.out.empty());
  };
  expect_usage({"--status", "gone"});
  expect_usage({"--limit", "0"});
  expect_usage({"--limit", "1001"});
  expect_usage({"--limit", "two"});
  expect_usage({"--cursor", "zz"});
  expect_usage({"--cursor", first_cursor, "--status", "active"});
  std::string flipped = first_cursor;
  flipped[10] = flipped[10] == '0' ? '1' : '0';
  expect_usage({"--cursor", flipped});
  const Run r = run_cli({"--db", db, "list", "--account", kOtherAccount, "--cursor", first_cursor});
  CHECK(r.code == 2);
}

TEST_CASE("cli: verify with required scopes", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json created = create_key(
      db, kAccount,
      {"--scope", "invoices:read", "--scope", "reports.*", "--metadata", R"({"plan":"pro"})"});
  const std::string pk = created.at("public_key").get<std::string>();
  const std::string sk = created.at("secret_key").get<std::string>();

  // Valid: the answer carries the key's scopes and metadata.
  Run r = run_cli(
      {"--db", db, "verify", pk, sk, "--scope", "invoices:read", "--scope", "reports.daily"});
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  Json v = Json::parse(r.out);
  CHECK(v.at("valid") == true);
  CHECK(v.at("scopes") == Json::array({"invoices:read", "reports.*"}));
  CHECK(v.at("metadata") == Json::parse(R"({"plan":"pro"})"));
  CHECK_FALSE(v.contains("missing_scopes"));

  // Missing scopes: exit 1, insufficient_scope, the missing ones in the order required.
  r = run_cli({"--db", db, "verify", "--scope", "invoices:write", "--scope", "invoices:read",
               "--scope", "admin", pk + ":" + sk});
  CHECK(r.code == 1);
  v = Json::parse(r.out);
  CHECK(v.at("valid") == false);
  CHECK(v.at("code") == "insufficient_scope");
  CHECK(v.at("missing_scopes") == Json::array({"invoices:write", "admin"}));
  CHECK_FALSE(v.contains("metadata"));

  // From stdin too.
  r = run_cli({"--db", db, "verify", "-", "--scope", "nope"}, kPepperHex, pk + ":" + sk + "\n");
  CHECK(r.code == 1);
  CHECK(Json::parse(r.out).at("code") == "insufficient_scope");

  // A wrong secret is wrong_secret whatever is required, and lists nothing.
  r = run_cli({"--db", db, "verify", pk, "sk_WrongWrongWrongWrongWrongWrong12", "--scope", "x"});
  CHECK(r.code == 1);
  v = Json::parse(r.out);
  CHECK(v.at("code") == "wrong_secret");
  CHECK_FALSE(v.contains("missing_scopes"));

  // A key without metadata or scopes: {} and [].
  const Json bare = create_key(db);
  r = run_cli({"--db", db, "verify", bare.at("public_key").get<std::string>(),
               bare.at("secret_key").get<std::string>()});
  REQUIRE(r.code == 0);
  v = Json::parse(r.out);
  CHECK(v.at("metadata") == Json::object());
  CHECK(v.at("scopes") == Json::array());

  // A required scope that holds a secret is refused, not echoed in missing_scopes.
  const std::string secret_scope = "sk_abcdefghijklmnopqrstuvwxyz012345";
  r = run_cli({"--db", db, "verify", pk, sk, "--scope", secret_scope});
  CHECK(r.code == 2);
  CHECK_FALSE(contains(r.out + r.err, secret_scope.substr(3)));
}

TEST_CASE("cli: PostgreSQL and Redis options", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  create_key(db);
  const std::string password = "Hunter2Hunter2pw";
  const std::string url = "postgresql://app:" + password + "@127.0.0.1:1/apikeys?connect_timeout=2";
  std::vector<Run> runs;

  // No server listens on port 1: a storage failure (exit 4) where PostgreSQL is built
  // in, a clear usage error where it is not. Never the password.
  for (const std::string& u : {url, "postgres://app:" + password + "@127.0.0.1:1/apikeys",
                               "postgresql://127.0.0.1:1/apikeys?password=" + password}) {
    const Run r = run_cli({"--db", u, "list", "--account", kAccount});
    runs.push_back(r);
    INFO("stderr: " << r.err);
    CHECK(r.out.empty());
#if defined(APIKEYS_HAS_POSTGRES)
    CHECK(r.code == 4);
#else
    CHECK(r.code == 2);
    CHECK(contains(r.err, "this build has no PostgreSQL support"));
#endif
  }
  Run r = run_cli({"--db=" + url, "create", "--account", kAccount, "--title", "t"});
  runs.push_back(r);
  CHECK(r.out.empty());
  CHECK((r.code == 4 || r.code == 2));

#if !defined(APIKEYS_HAS_REDIS)
  r = run_cli({"--db", db, "--redis", "127.0.0.1:6379", "list", "--account", kAccount});
  CHECK(r.code == 2);
  CHECK(contains(r.err, "this build has no Redis support"));
#else
  // A Redis that cannot be reached: reads work (they never touch it); a change is saved
  // and printed, then reported as not told to the shared cache (exit 4). Even rotate's
  // new secret is printed.
  const Json k = create_key(db);
  const std::string key_id = k.at("key_id").get<std::string>();
  r = run_cli({"--db", db, "--redis", "127.0.0.1:1", "list", "--account", kAccount});
  CHECK(r.code == 0);
  // A prefix becomes Redis key names: the pepper or a secret key in it is refused
  // before any connection.
  r = run_cli({"--db", db, "--redis", "127.0.0.1:1", "--redis-prefix", kPepperHex + ":", "list",
               "--account", kAccount});
  CHECK(r.code == 2);
  CHECK(contains(r.err, "--redis-prefix holds a secret key or the pepper"));
  r = run_cli({"--db", db, "--redis", "127.0.0.1:1", "--redis-prefix",
               "sk_abcdefghijklmnopqrstuvwxyzABCDEF:", "list", "--account", kAccount});
  CHECK(r.code == 2);
  CHECK(contains(r.err, "--redis-prefix holds a secret key or the pepper"));
  r = run_cli(plus(key_args(db, "disable", key_id), {"--redis", "127.0.0.1:1"}));
  CHECK(r.code == 4);
  CHECK(contains(r.err, "shared cache"));
  CHECK(Json::parse(r.out).at("status") == "disabled");
  CHECK(run_json(key_args(db, "get", key_id)).at("status") == "disabled");
  run_json(key_args(db, "enable", key_id));
  r = run_cli(plus(key_args(db, "rotate", key_id), {"--redis", "127.0.0.1:1"}));
  CHECK(r.code == 4);
  CHECK(contains(r.err, "shared cache"));
  const Json rotated = Json::parse(r.out);
  CHECK(rotated.at("new").at("secret_key").get<std::string>().rfind("sk_", 0) == 0);
  CHECK(rotated.at("old").at("rotated_to") == rotated.at("new").at("key_id"));
#endif
  r = run_cli({"--db", db, "--redis", "nocolon", "list", "--account", kAccount});
  CHECK(r.code == 2);
  r = run_cli({"--db", db, "--redis", "127.0.0.1:70000", "list", "--account", kAccount});
  CHECK(r.code == 2);
  r = run_cli({"--db", db, "--redis-prefix", "p:", "list", "--account", kAccount});
  CHECK(r.code == 2);  // needs --redis
  r = run_cli({"--db", db, "--pg-schema", "s", "list", "--account", kAccount});
  CHECK(r.code == 2);  // a SQLite --db
  CHECK(contains(r.err, "--pg-schema"));

  for (const Run& o : runs) {
    CHECK_FALSE(contains(o.out + o.err, password));
    CHECK_FALSE(contains(o.out + o.err, password.substr(0, 8)));
  }
}

TEST_CASE("cli: a postgresql:// --db is blanked from its command line", "[cli]") {
  // `verify -` reads its token before it opens the database: look at it while it waits.
  const std::string password = "Hunter2Hunter2pw";
  const std::string url = "postgresql://app:" + password + "@127.0.0.1:1/apikeys";
  const std::vector<std::string> args{APIKEYS_CLI_PATH, "--db", url, "verify", "-"};
  apikeys_test::StartedProgram child =
      apikeys_test::start_program(args, {"APIKEYS_PEPPER=" + kPepperHex});
  const std::string proc = "/proc/" + std::to_string(child.pid);
  std::string cmdline;
  // The CLI has blanked its arguments once its core limit is set and its command line
  // no longer shows the password.
  const bool blanked = eventually([&] {
    cmdline = apikeys_test::read_file(proc + "/cmdline");
    return apikeys_test::has_exited(child) ||
           (cmdline.rfind(std::string(APIKEYS_CLI_PATH) + '\0', 0) == 0 &&
            !contains(cmdline, password));
  });
  CHECK(blanked);
  CHECK(contains(cmdline, "--db"));
  CHECK_FALSE(contains(cmdline, password));
  const Run r = apikeys_test::finish_program(child);  // EOF on stdin: "no token", exit 2
  CHECK(r.code == 2);
  CHECK_FALSE(contains(r.err, password));
}

// ASan and TSan replace malloc and free and must come first in the process; a free()
// hook preloaded ahead of them cannot work, so sanitizer builds skip that one test.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define APIKEYS_TEST_SANITIZER_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define APIKEYS_TEST_SANITIZER_ALLOCATOR 1
#endif
#endif

TEST_CASE("cli: no block the CLI frees holds a secret or the pepper", "[cli]") {
#if defined(APIKEYS_TEST_SANITIZER_ALLOCATOR)
  std::cout
      << "cli: free() hook test skipped: this is a sanitizer build (its allocator must come first)\n";
#elif !defined(APIKEYS_FREE_HOOK_PATH)
  std::cout << "cli: free() hook test skipped: the hook is built on Linux (glibc) only\n";
#else
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string report = dir.file("free-hook.txt");
  const std::string pepper_file = dir.file("pepper.hex");
  std::ofstream(pepper_file) << kPepperHex << "\n";

  // Runs the CLI under the hook (tests/support/secret_free_hook.cpp), which lists in `report`
  // every freed block holding "sk_" + 32 base62 characters or the pepper's hex.
  auto run_hooked = [&](const std::string& what, const std::vector<std::string>& args,
                        int expected_code, const std::string& input = "") {
    std::remove(report.c_str());
    std::vector<std::string> argv{APIKEYS_CLI_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    const Run r = apikeys_test::run_program(
        argv,
        {"APIKEYS_PEPPER=" + kPepperHex, "LD_PRELOAD=" APIKEYS_FREE_HOOK_PATH,
         "APIKEYS_FREE_HOOK_REPORT=" + report, "APIKEYS_FREE_HOOK_PEPPER=" + kPepperHex},
        input);
    const std::string found = apikeys_test::read_file(report);
    INFO(what << "\nstderr: " << r.err << "\nfree() hook report:\n" << found);
    CHECK(r.code == expected_code);
    REQUIRE(contains(found, "free hook loaded\n"));  // the hook was in the process...
    CHECK(contains(found, " freed blocks\n"));       // ...until it exited,
    CHECK_FALSE(contains(found, "searched 0 "));     // it saw frees,
    CHECK_FALSE(contains(found, " held "));          // and none held a secret
    return r;
  };

  const Run created =
      run_hooked("create", {"--db", db, "create", "--account", kAccount, "--title", "t"}, 0);
  const Json key = Json::parse(created.out);
  const std::string pk = key.at("public_key").get<std::string>();
  const std::string sk = key.at("secret_key").get<std::string>();
  const std::string wrong = "sk_WrongWrongWrongWrongWrongWrong12";
  run_hooked(
      "create, pepper from a file",
      {"--db", db, "--pepper-file", pepper_file, "create", "--account", kAccount, "--title", "t"},
      0);
  run_hooked("verify PUBLIC SECRET", {"--db", db, "verify", pk, sk}, 0);
  run_hooked("verify PUBLIC:SECRET", {"--db", db, "verify", pk + ":" + sk}, 0);
  run_hooked("verify SECRET PUBLIC", {"--db", db, "verify", sk, pk}, 1);
  run_hooked("verify SECRET", {"--db", db, "verify", sk}, 1);
  run_hooked("verify - (stdin)", {"--db", db, "verify", "-"}, 0, pk + ":" + sk + "\n");
  run_hooked("verify, pepper from a file",
             {"--db", db, "--pepper-file", pepper_file, "verify", pk, sk}, 0);
  run_hooked("verify a wrong secret", {"--db", db, "verify", pk, wrong}, 1);
  // Failures on the way: a parse error, a refused value, a conversion error.
  run_hooked("verify with extra arguments", {"--db", db, "verify", pk, sk, sk}, 2);
  run_hooked("a secret as title", {"--db", db, "create", "--account", kAccount, "--title", sk}, 2);
  run_hooked("a secret as expiry",
             {"--db", db, "create", "--account", kAccount, "--title", "t", "--expires-in-days", sk},
             2);
  run_hooked("verify with a missing scope", {"--db", db, "verify", pk, sk, "--scope", "x"}, 1);
  const std::string key_id = key.at("key_id").get<std::string>();
  run_hooked("update",
             {"--db", db, "update", "--account", kAccount, "--key-id", key_id, "--title", "u"}, 0);
  run_hooked("a secret as a scope",
             {"--db", db, "update", "--account", kAccount, "--key-id", key_id, "--scope", sk}, 2);
  const Run rotated =
      run_hooked("rotate", {"--db", db, "rotate", "--account", kAccount, "--key-id", key_id}, 0);
  const Json fresh = Json::parse(rotated.out).at("new");
  run_hooked("verify the rotated key",
             {"--db", db, "verify", fresh.at("public_key").get<std::string>(),
              fresh.at("secret_key").get<std::string>()},
             0);
  // A secret pasted into a title of a JSON-lines export: the row is refused, and no
  // copy of the line (the JSON parser's included) is freed unwiped.
  const std::string legacy = dir.file("legacy-pepper");
  std::ofstream(legacy) << "Zq8vR2mT7xK4pL9wB3nJ6cF1hD5sG0yA\n";
  const std::string jsonl = dir.file("export.jsonl");
  std::ofstream(jsonl) << R"({"public_key": "pk_x", "title": "deploy key )" << sk
                       << R"( and more text, so that the parser's buffers grow"})"
                       << "\n";
  run_hooked("import, a secret in a JSON title",
             {"--db", db, "--legacy-pepper-file", legacy, "import", jsonl}, 6);
  // A value that starts with a dash and holds a secret before an '=': no option name.
  run_hooked("a dash-led value holding a secret and '='",
             {"--db", db, "create", "--account", kAccount, "--title", "t", "--description",
              "-was " + sk + "=old"},
             2);
  // A secret given where a cursor or a path goes.
  run_hooked("list --cursor SECRET", {"--db", db, "list", "--account", kAccount, "--cursor", sk},
             2);
  run_hooked("audit --cursor SECRET", {"--db", db, "audit", "--account", kAccount, "--cursor", sk},
             2);
  run_hooked("import SECRET.csv",
             {"--db", db, "--legacy-pepper-file", legacy, "import", dir.file(sk + ".csv")}, 2);
  run_hooked("import x.SECRET",
             {"--db", db, "--legacy-pepper-file", legacy, "import", dir.file("x." + sk)}, 2);
  // scan, over a directory named after a secret that holds a file named after one.
  const std::string tree = dir.file("scan-" + sk);
  fs::create_directories(tree + "/below");
  std::ofstream(tree + "/below/" + sk + ".txt") << "nothing to find\n";
  std::ofstream(tree + "/found.txt") << "leaked: " << pk << "\n";
  run_hooked("scan a tree named after a secret", {"scan", tree}, 1);
  run_hooked("scan a missing SECRET.csv", {"scan", dir.file(sk + ".csv")}, 2);
  // The pepper pasted where the audit trail, a path or a rate limit's name goes: refused,
  // and no copy made on the way (before the pepper is loaded to compare) left unwiped.
  run_hooked(
      "revoke --reason PEPPER",
      {"--db", db, "revoke", "--account", kAccount, "--key-id", key_id, "--reason", kPepperHex}, 2);
  run_hooked("revoke --actor service:PEPPER",
             {"--db", db, "revoke", "--account", kAccount, "--key-id", key_id, "--actor",
              "service:" + kPepperHex},
             2);
  run_hooked("--db PEPPER list", {"--db", kPepperHex, "list", "--account", kAccount}, 2);
  run_hooked("create --rate-limit PEPPER=1/1s",
             {"--db", db, "create", "--account", kAccount, "--title", "t", "--rate-limit",
              kPepperHex + "=1/1s"},
             2);
#endif
}

TEST_CASE("cli: the CLI cannot dump core", "[cli]") {
  // `verify -` waits for its token on stdin: look at the waiting process. A process that
  // is not dumpable has the files in its /proc/PID owned by root, which tells only when
  // it runs as someone else: as root, run it as nobody.
  const bool root = geteuid() == 0;
  apikeys_test::RunAs as;
  if (root) {
    as.change = true;
    as.uid = 65534;
    as.gid = 65534;
  }
  TempDir dir;
  const std::string db = dir.file("keys.db");  // not opened before the token is read
  const std::vector<std::string> args{APIKEYS_CLI_PATH, "--db", db, "verify", "-"};
  apikeys_test::StartedProgram child =
      apikeys_test::start_program(args, {"APIKEYS_PEPPER=" + kPepperHex}, as);
  const std::string proc = "/proc/" + std::to_string(child.pid);

  // Until execve is done, /proc/PID shows the forked test process: wait for the CLI's
  // own command line, then for its core limit (set first thing in main).
  const bool started = eventually([&] {
    return apikeys_test::has_exited(child) ||
           apikeys_test::read_file(proc + "/cmdline")
                   .rfind(std::string(APIKEYS_CLI_PATH) + '\0', 0) == 0;
  });
  REQUIRE(started);
  if (apikeys_test::has_exited(child)) {
    const Run r = apikeys_test::finish_program(child);
    // 125/127: this machine cannot run the CLI as nobody (e.g. a build directory only
    // root may enter), so the test cannot tell dumpable from not.
    if (root && (r.code == 125 || r.code == 127)) {
      std::cout << "cli: core dump test skipped: cannot run the CLI as uid 65534 (exit " << r.code
                << ")\n";
      return;
    }
    INFO("exit " << r.code << ", stderr: " << r.err);
    const bool exited_before_reading_stdin = true;
    REQUIRE_FALSE(exited_before_reading_stdin);
  }
  std::string limits;
  CHECK(eventually([&] {
    limits = core_limits(apikeys_test::read_file(proc + "/limits"));
    return limits == "0 0";
  }));
  INFO("Max core file size (soft hard): " << limits);
  CHECK(limits == "0 0");  // soft and hard: the CLI cannot raise it again either

  const std::string status = proc + "/status";
  struct stat st {};
  CHECK(eventually([&] { return stat(status.c_str(), &st) == 0 && st.st_uid == 0; }));
  INFO("owner of " << status << ": " << st.st_uid << " (the CLI runs as "
                   << (root ? as.uid : geteuid()) << ")");
  CHECK(st.st_uid == 0);  // not dumpable

  const Run r = apikeys_test::finish_program(child);  // EOF on stdin: "no token", exit 2
  CHECK(r.code == 2);
}

TEST_CASE("cli: arguments that may be secrets are blanked from its command line", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json key = create_key(db);
  const std::string pk = key.at("public_key").get<std::string>();
  const std::string sk = key.at("secret_key").get<std::string>();

  // The CLI reads its pepper from a FIFO, whose open() waits for a writer: a process
  // caught there has parsed its arguments. Our non-blocking open for writing fails
  // (ENXIO) until the CLI is waiting in its open().
  const std::string fifo = dir.file("pepper.fifo");
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);

  struct Case {
    std::string name;
    std::vector<std::string> args;
    int code;
  };
  const std::vector<Case> cases{
      {"verify PUBLIC SECRET", {"verify", pk, sk}, 0},
      {"verify PUBLIC:SECRET", {"verify", pk + ":" + sk}, 0},
      {"verify SECRET PUBLIC", {"verify", sk, pk}, 1},
      {"verify SECRET", {"verify", sk}, 1},
      {"a secret as --description=",
       {"create", "--account", kAccount, "--title", "t", "--description=" + sk},
       2},
      {"the pepper as a title", {"create", "--account", kAccount, "--title", kPepperHex}, 2},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    std::vector<std::string> args{APIKEYS_CLI_PATH, "--db", db, "--pepper-file", fifo};
    args.insert(args.end(), c.args.begin(), c.args.end());
    apikeys_test::StartedProgram child = apikeys_test::start_program(args, {});
    int writer = -1;
    REQUIRE(eventually([&] {
      writer = open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      return writer >= 0 || apikeys_test::has_exited(child);
    }));
    REQUIRE(writer >= 0);
    const std::string cmdline =
        apikeys_test::read_file("/proc/" + std::to_string(child.pid) + "/cmdline");
    const std::string pepper_line = kPepperHex + "\n";
    const bool wrote = write(writer, pepper_line.data(), pepper_line.size()) ==
                       static_cast<ssize_t>(pepper_line.size());
    close(writer);
    CHECK(contains(cmdline, "--pepper-file"));  // this is the CLI's command line
    CHECK_FALSE(contains(cmdline, sk.substr(3)));
    CHECK_FALSE(contains(cmdline, kPepperHex));
    CHECK(wrote);
    const Run r = apikeys_test::finish_program(child);
    INFO("stderr: " << r.err);
    CHECK(r.code == c.code);
  }
}

TEST_CASE("cli: a hidden value that starts with a dash reaches its option unchanged", "[cli]") {
  // Values that may be secrets are hidden from the parser, each behind a placeholder;
  // one that starts with a dash keeps it, so the parser sees "-<not shown #N>" and
  // takes that whole as the option's value. What is stored must be the value given.
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string title = "-" + std::string(35, 'A');
  const std::string description = "-d=" + std::string(40, 'B');
  const Run created = run_cli({"--db", db, "create", "--account", kAccount, "--title", title,
                               "--description", description});
  INFO("stderr: " << created.err);
  REQUIRE(created.code == 0);
  const Json key = Json::parse(created.out);
  CHECK(key.at("title") == title);
  CHECK(key.at("description") == description);
  const Run r = run_cli({"--db", db, "update", "--account", kAccount, "--key-id",
                         key.at("key_id").get<std::string>(), "--title", "--" + title});
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).at("title") == "--" + title);
}

TEST_CASE("cli: metadata is printed exactly as it was stored", "[cli]") {
  // Parsing and printing it again would change these numbers.
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string metadata = R"({"big":123456789012345678901234567890,"neg":-0,"e":1E2})";
  const Run created = run_cli(
      {"--db", db, "create", "--account", kAccount, "--title", "Exact", "--metadata", metadata});
  REQUIRE(created.code == 0);
  CHECK(contains(created.out, "\"metadata\": " + metadata));
  const std::string key_id = Json::parse(created.out).at("key_id").get<std::string>();
  const Run got = run_cli(key_args(db, "get", key_id));
  REQUIRE(got.code == 0);
  CHECK(contains(got.out, "\"metadata\": " + metadata));
  CHECK_NOTHROW(Json::parse(got.out));
  const Run listed = run_cli({"--db", db, "list", "--account", kAccount});
  REQUIRE(listed.code == 0);
  CHECK(contains(listed.out, "\"metadata\": " + metadata));
  CHECK_NOTHROW(Json::parse(listed.out));
}

TEST_CASE("cli: stored text reaches the terminal with its control characters escaped", "[cli]") {
  // Metadata may hold any character a JSON string holds, and a store written by other
  // means any title: the JSON printed escapes C0 and C1 controls, DEL, and the
  // invisible and bidirectional characters as \uXXXX, and still parses to the same value.
  TempDir dir;
  const std::string db = dir.file("keys.db");
  // A tab and CR LF between its tokens are JSON's own whitespace: they stay, the CR as a
  // space (it would send the cursor back over the line).
  const std::string metadata =
      "{\"csi\":\"\xc2\x9b"
      "2J\",\t\"del\":\"a\x7f"
      "b\",\r\n\"rlo\":\"\xe2\x80\xae"
      "x\","
      "\"ls\":\"\xe2\x80\xa8\",\"tag\":\"\xf3\xa0\x81\x81\xc2\xad\","
      "\"ok\":\"\xc3\xa9\xf0\x9f\x94\x91\"}";
  const Run created = run_cli(
      {"--db", db, "create", "--account", kAccount, "--title", "Escaped", "--metadata", metadata});
  REQUIRE(created.code == 0);
  const std::string key_id = Json::parse(created.out).at("key_id").get<std::string>();
  for (const Run& r : {created, run_cli(key_args(db, "get", key_id)),
                       run_cli({"--db", db, "list", "--account", kAccount})}) {
    INFO("stdout: " << r.out);
    REQUIRE(r.code == 0);
    for (const char* raw :
         {"\xc2\x9b", "\x7f", "\xe2\x80\xae", "\xe2\x80\xa8", "\xf3\xa0\x81\x81", "\xc2\xad"}) {
      CHECK_FALSE(contains(r.out, raw));
    }
    CHECK(contains(r.out, "\\u009b2J"));
    CHECK(contains(r.out, "a\\u007fb"));
    CHECK(contains(r.out, "\\u202ex"));
    CHECK(contains(r.out, "\\u2028"));
    CHECK(contains(r.out, "\\udb40\\udc41\\u00ad"));     // a tag character, a soft hyphen
    CHECK(contains(r.out, "\xc3\xa9\xf0\x9f\x94\x91"));  // printable non-ASCII stays as it is
    CHECK(contains(r.out, "2J\",\t\"del\""));
    CHECK(contains(r.out, "b\", \n\"rlo\""));  // CR between tokens: a space
    CHECK_FALSE(contains(r.out, "\r"));
    Json parsed = Json::parse(r.out);
    const Json key = parsed.is_array() ? parsed.at(0) : parsed;
    CHECK(key.at("metadata") == Json::parse(metadata));
  }
}

TEST_CASE("cli: a secret_key member in metadata never takes the new key's secret", "[cli]") {
  // Metadata keeps its own whitespace, so it can hold a line exactly like the one the
  // secret goes on; create and rotate must still place it, once, in the key's own field.
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string metadata =
      "{\"x\": 1,\n  \"secret_key\": \"\",\n  \"n\": {\n    \"secret_key\": \"\"}}";
  const Run created = run_cli(
      {"--db", db, "create", "--account", kAccount, "--title", "Decoy", "--metadata", metadata});
  INFO("stdout: " << created.out << "\nstderr: " << created.err);
  REQUIRE(created.code == 0);
  const Json key = Json::parse(created.out);
  const std::string sk = key.at("secret_key").get<std::string>();
  CHECK(sk.rfind("sk_", 0) == 0);
  CHECK(key.at("metadata") == Json::parse(metadata));
  const std::string pk = key.at("public_key").get<std::string>();
  CHECK(run_cli({"--db", db, "verify", pk + ":" + sk}).code == 0);

  const std::string key_id = key.at("key_id").get<std::string>();
  const Run rotated = run_cli(key_args(db, "rotate", key_id));
  INFO("rotate stdout: " << rotated.out << "\nstderr: " << rotated.err);
  REQUIRE(rotated.code == 0);
  const Json fresh = Json::parse(rotated.out).at("new");
  const std::string new_sk = fresh.at("secret_key").get<std::string>();
  CHECK(new_sk.rfind("sk_", 0) == 0);
  CHECK(fresh.at("metadata") == Json::parse(metadata));
  CHECK(run_cli({"--db", db, "verify", fresh.at("public_key").get<std::string>() + ":" + new_sk})
            .code == 0);
}

TEST_CASE("cli: stored text shaped like an embedded object is printed as text", "[cli]") {
  // The CLI prints metadata as stored by splicing it over a marker string. A title or
  // description written to the store by other means (not through KeyManager, which
  // refuses control characters) that holds such a marker must stay a string: it must
  // not add members to the printed key, nor make rotate lose the new secret.
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json created = create_key(db);
  const std::string key_id = created.at("key_id").get<std::string>();
  const std::string forged = "\"x\", \"status\": \"forged\", \"secret_key\": \"\", \"y\": \"z\"";
  const std::string injected = "\x01metadata:" + apikeys::detail::hex_encode(forged) + "\x01";
  {
    apikeys::SqliteStore store(db);
    const auto account = apikeys::Uuid::parse(kAccount);
    const auto id = apikeys::Uuid::parse(key_id);
    REQUIRE(account);
    REQUIRE(id);
    apikeys::KeyInfo next = *store.get(*account, *id);
    next.title = injected;
    next.description = injected;
    REQUIRE(store.replace(*account, next, next.version).outcome == apikeys::WriteOutcome::applied);
  }
  for (const Run& r : {run_cli(key_args(db, "get", key_id)),
                       run_cli({"--db", db, "list", "--account", kAccount})}) {
    INFO("stdout: " << r.out);
    REQUIRE(r.code == 0);
    const Json parsed = Json::parse(r.out);
    const Json key = parsed.is_array() ? parsed.at(0) : parsed;
    CHECK(key.at("title") == injected);
    CHECK(key.at("description") == injected);
    CHECK(key.at("status") == "active");
    CHECK_FALSE(key.contains("y"));
  }
  const Run rotated = run_cli(key_args(db, "rotate", key_id));
  INFO("rotate stdout: " << rotated.out << "\nstderr: " << rotated.err);
  REQUIRE(rotated.code == 0);
  const Json fresh = Json::parse(rotated.out).at("new");
  CHECK(fresh.at("secret_key").get<std::string>().rfind("sk_", 0) == 0);
  CHECK(fresh.at("title") == injected);
}

TEST_CASE("cli: a key=value connection string as --db is refused, never shown", "[cli]") {
  TempDir dir;
  const std::string conninfo = "host=" + dir.file("h") + " password=hunter2pw dbname=app";
  for (const char* command : {"create", "list"}) {
    const Run r = run_cli({"--db", conninfo, command, "--account", kAccount, "--title", "t"});
    CHECK(r.code == 2);
    CHECK_FALSE(contains(r.err, "hunter2pw"));
    CHECK_FALSE(contains(r.out, "hunter2pw"));
  }
}

TEST_CASE("cli: a --db that may hold a secret stays hidden when its name is escaped", "[cli]") {
  // SqliteStore names the file with its bytes outside printable ASCII (and the
  // backslash) escaped; the CLI must still find a hidden value in that form.
  TempDir dir;
  const std::string run = "0123456789abcdefghijABCDEFGHIJ01";
  for (const std::string& odd : {std::string("\xc3\xa9"), std::string("\\"), std::string("\x1b")}) {
    const std::string db = dir.file("missing-dir/" + odd + run + ".db");
    const Run r = run_cli({"--db", db, "create", "--account", kAccount, "--title", "t"});
    INFO("stderr: " << r.err);
    CHECK(r.code == 4);
    CHECK(contains(r.err, "<not shown>"));
    CHECK_FALSE(contains(r.err, run));
  }
}

TEST_CASE("cli: a value that does not parse never reaches the terminal raw", "[cli]") {
  // Every number is parsed by the CLI itself, whose messages name the option and its
  // range, never the value: an escape sequence or a newline in it is not shown at all.
  TempDir dir;
  const Run r = run_cli({"--db", dir.file("k.db"), "create", "--account", kAccount, "--title", "t",
                         "--expires-in-days", "\x1b[2J\n\x9b"});
  INFO("stderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(contains(r.err, "--expires-in-days"));
  CHECK_FALSE(contains(r.err, "2J"));
  CHECK(std::none_of(r.err.begin(), r.err.end(), [](char c) {
    const auto b = static_cast<unsigned char>(c);
    return (b < 0x20 && b != '\n') || b >= 0x7F;
  }));
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
}

TEST_CASE("cli: a --db file that cannot be opened is named with its bytes escaped", "[cli]") {
  // SqliteStore's error names the file: a name holding an escape sequence or a newline
  // reaches the terminal as \xNN, never raw.
  TempDir dir;
  const std::string db = dir.file("missing-dir/a\x1b[2J\nb.db");
  const Run r = run_cli({"--db", db, "create", "--account", kAccount, "--title", "t"});
  INFO("stderr: " << r.err);
  CHECK(r.code == 4);
  CHECK(contains(r.err, "a\\x1b[2J\\x0ab.db"));
  CHECK_FALSE(contains(r.err, "\x1b"));
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
}

namespace {

// Runs the CLI as run_cli() does, with `extra` (NAME=value) added to its environment.
Run run_cli_env(const std::vector<std::string>& args, const std::vector<std::string>& extra,
                const std::string& input = "") {
  std::vector<std::string> argv{APIKEYS_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> env{"APIKEYS_PEPPER=" + kPepperHex};
  env.insert(env.end(), extra.begin(), extra.end());
  return apikeys_test::run_program(argv, env, input);
}

// The verdict code of a `verify` run.
std::string verdict(const Run& r) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  return Json::parse(r.out).at("code").get<std::string>();
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
  REQUIRE(out.good());
}

// The Python service's API_KEY_SECRET in the tests: short, as a real one may be.
const std::string kLegacyPepper = "change-me-in-prod";

// Inserts into the SQLite file `db` a key made as the Python service makes them, its
// digest under the legacy pepper; returns its public and secret keys.
std::pair<std::string, std::string> insert_legacy_key(const std::string& db) {
  apikeys::CsprngKeyGenerator generator;
  const apikeys::KeyPair pair = generator.generate(apikeys::KeyFormat{});
  const std::string pepper = hex_decode(kPepperHex);  // Pepper::bytes is a view of it
  const std::vector<apikeys::Pepper> peppers{{1, pepper}};
  const apikeys::HmacSha256Hasher hasher(peppers, 1, kLegacyPepper);
  apikeys::KeyRecord r;
  r.info.key_id = apikeys::Uuid::random();
  r.info.account_id = *apikeys::Uuid::parse(kAccount);
  r.info.public_key = pair.public_key;
  r.info.title = "from the Python service";
  r.info.created_at = r.info.updated_at = apikeys::system_clock()->now();
  r.digest = *hasher.hash_with(pair.secret_key.reveal(), apikeys::kLegacyPepperId);
  apikeys::SqliteStore store(db);
  store.insert(r);
  return {pair.public_key, std::string(pair.secret_key.reveal())};
}

}  // namespace

TEST_CASE("cli: --brand issues branded keys, verify accepts them and pk_/sk_ keys", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json plain = create_key(db);
  const Json branded = create_key(db, kAccount, {"--brand", "acme"});
  const std::string pk = branded.at("public_key").get<std::string>();
  const std::string sk = branded.at("secret_key").get<std::string>();
  const apikeys::KeyFormat acme = apikeys::KeyFormat::branded("acme");
  CHECK(acme.is_public_key(pk));
  CHECK(acme.is_secret_key(sk));
  const std::string plain_pk = plain.at("public_key").get<std::string>();
  const std::string plain_sk = plain.at("secret_key").get<std::string>();

  // With the brand, both formats verify; without it, exactly as before: pk_/sk_ only.
  CHECK(verdict(run_cli({"--db", db, "--brand", "acme", "verify", pk, sk})) == "valid");
  CHECK(verdict(run_cli({"--db", db, "verify", "--brand", "acme", pk + ":" + sk})) == "valid");
  CHECK(verdict(run_cli({"--db", db, "--brand", "acme", "verify", plain_pk, plain_sk})) == "valid");
  CHECK(verdict(run_cli({"--db", db, "verify", plain_pk, plain_sk})) == "valid");
  CHECK(verdict(run_cli({"--db", db, "verify", pk, sk})) == "malformed");
  // A branded key with one character changed fails its checksum: malformed.
  std::string typo = sk;
  typo[12] = typo[12] == 'a' ? 'b' : 'a';
  CHECK(verdict(run_cli({"--db", db, "--brand", "acme", "verify", pk, typo})) == "malformed");

  // APIKEYS_BRAND does the same; the option wins over it.
  Run r = run_cli_env({"--db", db, "verify", pk, sk}, {"APIKEYS_BRAND=acme"});
  CHECK(verdict(r) == "valid");
  r = run_cli_env({"--db", db, "--brand", "zeta9", "create", "--account", kAccount, "--title", "t"},
                  {"APIKEYS_BRAND=acme"});
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).at("public_key").get<std::string>().rfind("zeta9_pk_", 0) == 0);

  // rotate issues a branded key too.
  r = run_cli({"--db", db, "--brand", "acme", "rotate", "--account", kAccount, "--key-id",
               plain.at("key_id").get<std::string>()});
  REQUIRE(r.code == 0);
  const Json fresh = Json::parse(r.out).at("new");
  CHECK(acme.is_secret_key(fresh.at("secret_key").get<std::string>()));
  CHECK(verdict(run_cli({"--db", db, "--brand", "acme", "verify",
                         fresh.at("public_key").get<std::string>(),
                         fresh.at("secret_key").get<std::string>()})) == "valid");
}

TEST_CASE("cli: a bad brand is a usage error naming the rule", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  for (const std::string brand : {"a", "ACME", "acme_x", "abcdefghijklmnopq", "ac-me"}) {
    INFO(brand);
    Run r =
        run_cli({"--db", db, "--brand", brand, "create", "--account", kAccount, "--title", "t"});
    CHECK(r.code == 2);
    CHECK(contains(r.err, "[a-z0-9]"));
    CHECK(r.out.empty());
    r = run_cli_env({"--db", db, "create", "--account", kAccount, "--title", "t"},
                    {"APIKEYS_BRAND=" + brand});
    CHECK(r.code == 2);
    CHECK(contains(r.err, "APIKEYS_BRAND"));
  }
  CHECK_FALSE(fs::exists(db));  // refused before the database is made
}

TEST_CASE("cli: --legacy-pepper-file verifies the Python service's keys", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  create_key(db);  // makes the database
  const auto [pk, sk] = insert_legacy_key(db);
  const std::string plain = dir.file("legacy");
  const std::string lf = dir.file("legacy-lf");
  const std::string crlf = dir.file("legacy-crlf");
  const std::string two = dir.file("legacy-two-newlines");
  write_file(plain, kLegacyPepper);
  write_file(lf, kLegacyPepper + "\n");
  write_file(crlf, kLegacyPepper + "\r\n");
  write_file(two, kLegacyPepper + "\n\n");

  // Without the legacy pepper the digest cannot be checked; wrong_secret, and nothing moves.
  CHECK(verdict(run_cli({"--db", db, "verify", pk, sk})) == "wrong_secret");
  // Only one line break is dropped: with two, the pepper is wrong.
  CHECK(verdict(run_cli({"--db", db, "--legacy-pepper-file", two, "verify", pk, sk})) ==
        "wrong_secret");
  for (const std::string& file : {plain, lf, crlf}) {
    INFO(file);
    const Run r = run_cli({"--db", db, "--legacy-pepper-file", file, "verify", pk, sk});
    CHECK(verdict(r) == "valid");
    CHECK(r.code == 0);
    // A short legacy pepper: one warning line, which shows neither the pepper nor the path.
    CHECK(contains(r.err, "warning: the legacy pepper is 17 bytes;"));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK_FALSE(contains(r.err, kLegacyPepper));
    CHECK_FALSE(contains(r.err, file));
  }

  // Every command takes it.
  for (const std::vector<std::string>& command :
       {std::vector<std::string>{"list", "--account", kAccount},
        std::vector<std::string>{"create", "--account", kAccount, "--title", "t"},
        std::vector<std::string>{"revoke-all", "--account", kOtherAccount}}) {
    std::vector<std::string> args{"--db", db, "--legacy-pepper-file", lf};
    args.insert(args.end(), command.begin(), command.end());
    const Run r = run_cli(args);
    INFO(command[0] << ": " << r.err);
    CHECK(r.code == 0);
  }
}

TEST_CASE("cli: a long legacy pepper gives no warning, a bad file is refused unseen", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  create_key(db);
  const std::string good = dir.file("legacy");
  write_file(good, std::string(32, 'p') + "\n");
  Run r = run_cli({"--db", db, "--legacy-pepper-file", good, "list", "--account", kAccount});
  CHECK(r.code == 0);
  CHECK(r.err.empty());

  const std::string missing = dir.file("no-such-legacy-pepper");
  const std::string empty = dir.file("empty-legacy-pepper");
  const std::string newline = dir.file("newline-legacy-pepper");
  const std::string huge = dir.file("huge-legacy-pepper");
  write_file(empty, "");
  write_file(newline, "\r\n");
  write_file(huge, std::string(4097, 'p'));
  for (const std::string& file : {missing, empty, newline, huge}) {
    INFO(file);
    r = run_cli({"--db", db, "--legacy-pepper-file", file, "list", "--account", kAccount});
    CHECK(r.code == 2);
    CHECK(contains(r.err, "--legacy-pepper-file"));
    CHECK_FALSE(contains(r.err, file));
    CHECK(r.out.empty());
  }
  // Too large by far: the message states the documented limit.
  write_file(huge, std::string(5000, 'p'));
  r = run_cli({"--db", db, "--legacy-pepper-file", huge, "list", "--account", kAccount});
  CHECK(r.code == 2);
  CHECK(contains(r.err, "larger than 4096 bytes"));
  // 4096 bytes and a line break: the longest accepted.
  write_file(huge, std::string(4096, 'p') + "\n");
  r = run_cli({"--db", db, "--legacy-pepper-file", huge, "list", "--account", kAccount});
  CHECK(r.code == 0);
}

namespace {

// A row of the Python service's `api_keys` table as its REST export gives it: a fresh
// key, its digest under kLegacyPepper. Returns the JSON line and the secret.
std::pair<std::string, std::string> legacy_row(const std::string& account = kAccount) {
  apikeys::CsprngKeyGenerator generator;
  const apikeys::KeyPair pair = generator.generate(apikeys::KeyFormat{});
  const std::string pepper = hex_decode(kPepperHex);  // Pepper::bytes is a view of it
  const std::vector<apikeys::Pepper> peppers{{1, pepper}};
  const apikeys::HmacSha256Hasher hasher(peppers, 1, kLegacyPepper);
  const apikeys::Digest d = *hasher.hash_with(pair.secret_key.reveal(), apikeys::kLegacyPepperId);
  Json row;
  row["key_id"] = apikeys::Uuid::random().to_string();
  row["public_key"] = pair.public_key;
  row["secret_key_hash"] = apikeys::detail::hex_encode(
      std::string_view(reinterpret_cast<const char*>(d.bytes.data()), d.bytes.size()));
  row["account_id"] = account;
  row["title"] = "Imported, with a comma";
  row["description"] = nullptr;
  row["status"] = "active";
  row["expires_at"] = nullptr;
  row["last_used_at"] = nullptr;
  row["created_at"] = "2026-11-24T19:00:28.123456+00:00";
  return {row.dump(), std::string(pair.secret_key.reveal())};
}

// The keys under the pepper with `role` in `peppers` output (0 when it is not listed).
std::uint64_t keys_with_role(const Run& r, const std::string& role) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  std::uint64_t n = 0;
  for (const Json& p : Json::parse(r.out)) {
    if (p.at("role") == role) n += p.at("keys").get<std::uint64_t>();
  }
  return n;
}

}  // namespace

// Like create, import makes its file when it is missing or empty; another application's
// file it refuses, byte for byte unchanged.
TEST_CASE("cli: import initialises an empty file and refuses another application's", "[cli]") {
  TempDir dir;
  const std::string legacy = dir.file("legacy");
  write_file(legacy, kLegacyPepper + "\n");
  const auto [row, secret] = legacy_row();
  const std::string export_file = dir.file("api_keys.jsonl");
  write_file(export_file, row + "\n");
  const std::string pk = Json::parse(row).at("public_key").get<std::string>();

  const std::string db = dir.file("empty.db");
  apikeys_test::make_empty_file(db);
  Run r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", export_file});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.code == 0);
  CHECK(Json::parse(r.out).at("imported") == 1);
  CHECK(verdict(run_cli({"--db", db, "--legacy-pepper-file", legacy, "verify", pk, secret})) ==
        "valid");

  for (const auto& file : apikeys_test::make_foreign_files(dir)) {
    INFO(file.what);
    const std::string before = apikeys_test::file_bytes(file.path);
    r = run_cli({"--db", file.path, "--legacy-pepper-file", legacy, "import", export_file});
    CHECK(r.code == 4);
    CHECK(contains(r.err, "not an apikeys database"));
    CHECK(apikeys_test::file_bytes(file.path) == before);
    CHECK_FALSE(fs::exists(file.path + "-wal"));
  }
}

TEST_CASE("cli: import prints a report, rejected rows exit 6, the others are imported", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string legacy = dir.file("legacy");
  write_file(legacy, kLegacyPepper + "\n");
  const auto [good, good_secret] = legacy_row();
  const auto [second, second_secret] = legacy_row(kOtherAccount);
  const Json first_row = Json::parse(good);
  Json bad = Json::parse(second);
  bad["key_id"] = "not-a-uuid";
  const std::string export_file = dir.file("api_keys.jsonl");
  write_file(export_file, good + "\n" + bad.dump() + "\n");

  Run r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", export_file});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.code == 6);
  Json report = Json::parse(r.out);
  CHECK(report.at("imported") == 1);
  CHECK(report.at("skipped") == 0);
  CHECK(report.at("rejected") == 1);
  REQUIRE(report.at("rejections").size() == 1);
  CHECK(report.at("rejections")[0].at("line") == 2);
  CHECK(contains(report.at("rejections")[0].at("reason").get<std::string>(), "key_id"));
  CHECK_FALSE(contains(r.out, first_row.at("secret_key_hash").get<std::string>()));

  const std::string pk = first_row.at("public_key").get<std::string>();
  CHECK(verdict(run_cli({"--db", db, "--legacy-pepper-file", legacy, "verify", pk, good_secret})) ==
        "valid");

  // Every row imported: exit 0; the one imported before is skipped.
  write_file(export_file, good + "\n" + second + "\n");
  r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", export_file});
  CHECK(r.code == 0);
  report = Json::parse(r.out);
  CHECK(report.at("imported") == 1);
  CHECK(report.at("skipped") == 1);
  CHECK(report.at("rejected") == 0);
  CHECK(report.at("rejections").empty());

  // From stdin, with --format.
  const auto [third, third_secret] = legacy_row();
  r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", "-", "--format", "jsonl"},
              kPepperHex, third + "\n");
  CHECK(r.code == 0);
  CHECK(Json::parse(r.out).at("imported") == 1);
}

TEST_CASE("cli: import usage errors", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string legacy = dir.file("legacy");
  write_file(legacy, kLegacyPepper);
  const std::string jsonl = dir.file("api_keys.jsonl");
  const std::string txt = dir.file("api_keys.txt");
  write_file(jsonl, legacy_row().first + "\n");
  write_file(txt, legacy_row().first + "\n");

  // The legacy pepper is required: without it no imported key could be verified.
  Run r = run_cli({"--db", db, "import", jsonl});
  CHECK(r.code == 2);
  CHECK(contains(r.err, "--legacy-pepper-file"));
  // The format must be known.
  r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", txt});
  CHECK(r.code == 2);
  CHECK(contains(r.err, "--format"));
  r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", jsonl, "--format", "xml"});
  CHECK(r.code == 2);
  r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", dir.file("missing.csv")});
  CHECK(r.code == 2);
  fs::create_directories(dir.file("export.csv"));
  r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", dir.file("export.csv")});
  CHECK(r.code == 2);
  CHECK_FALSE(fs::exists(db));  // nothing refused made a database

  // --format overrides the extension.
  r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", txt, "--format", "jsonl"});
  CHECK(r.code == 0);
  // A CSV without its header cannot be read at all: usage error, nothing imported.
  const std::string csv = dir.file("api_keys.csv");
  write_file(csv, "1,2,3\n");
  r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", csv});
  CHECK(r.code == 2);
  // A standard input that cannot be read (a directory) is a failure, never an empty
  // import that succeeded.
  r = apikeys_test::run_program(
      {"/bin/sh", "-c", "exec \"$0\" \"$@\" < \"$IMPORT_DIR\"", APIKEYS_CLI_PATH, "--db", db,
       "--legacy-pepper-file", legacy, "import", "-", "--format", "jsonl"},
      {"APIKEYS_PEPPER=" + kPepperHex, "IMPORT_DIR=" + dir.path().string()});
  INFO("stderr: " << r.err);
  CHECK(r.code == 4);
  CHECK(contains(r.err, "reading the file failed"));
}

TEST_CASE("cli: import input refused as a whole creates no database, from a file or stdin",
          "[cli]") {
  TempDir dir;
  const std::string legacy = dir.file("legacy");
  write_file(legacy, kLegacyPepper);
  const std::string header = "key_id,public_key,secret_key_hash,account_id,status,created_at\n";
  // A CSV whose header is absent, lacks a column, names one twice or is not valid CSV.
  const std::vector<std::string> bad{"",
                                     "\n\n",
                                     "1,2,3\n",
                                     "key_id,public_key,secret_key_hash,account_id,status\n",
                                     header.substr(0, header.size() - 1) + ",key_id\n",
                                     "\"key_id,public_key\n"};
  int n = 0;
  for (const std::string& text : bad) {
    INFO(text);
    const std::string csv = dir.file("bad" + std::to_string(n) + ".csv");
    write_file(csv, text);
    const std::string db = dir.file("file" + std::to_string(n) + ".db");
    Run r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", csv});
    CHECK(r.code == 2);
    CHECK(contains(r.err, "CSV"));
    CHECK_FALSE(fs::exists(db));
    const std::string piped = dir.file("stdin" + std::to_string(n) + ".db");
    r = run_cli({"--db", piped, "--legacy-pepper-file", legacy, "import", "-", "--format", "csv"},
                kPepperHex, text);
    CHECK(r.code == 2);
    CHECK(contains(r.err, "CSV"));
    CHECK_FALSE(fs::exists(piped));
    ++n;
  }
  // Standard input that cannot be read (a directory): a failure, and no database.
  const std::string unread = dir.file("unread.db");
  Run r = apikeys_test::run_program(
      {"/bin/sh", "-c", "exec \"$0\" \"$@\" < \"$IMPORT_DIR\"", APIKEYS_CLI_PATH, "--db", unread,
       "--legacy-pepper-file", legacy, "import", "-", "--format", "jsonl"},
      {"APIKEYS_PEPPER=" + kPepperHex, "IMPORT_DIR=" + dir.path().string()});
  CHECK(r.code == 4);
  CHECK(contains(r.err, "reading the file failed"));
  CHECK_FALSE(fs::exists(unread));

  // A usable header that arrives in pieces (a pipe written slowly) is waited for, and
  // the rows after it are imported; the database is made only once the header is in
  // (the writer looks for it while the header is half written).
  const Json row = Json::parse(legacy_row().first);
  std::string line;
  for (const char* column :
       {"key_id", "public_key", "secret_key_hash", "account_id", "status", "created_at"}) {
    const std::string v = row.at(column).get<std::string>();
    line += (line.empty() ? "" : ",") + v;
  }
  const std::string db = dir.file("slow.db");
  r = apikeys_test::run_program(
      {"/bin/sh", "-c",
       "{ printf '%s' \"$HEAD1\"; sleep 0.3; if [ -e \"$DB\" ]; then echo early >&2; fi; "
       "printf '%s' \"$HEAD2\"; sleep 0.2; printf '%s\\n' \"$ROW\"; } | exec \"$0\" \"$@\"",
       APIKEYS_CLI_PATH, "--db", db, "--legacy-pepper-file", legacy, "import", "-", "--format",
       "csv"},
      {"APIKEYS_PEPPER=" + kPepperHex, "HEAD1=" + header.substr(0, 20),
       "HEAD2=" + header.substr(20), "ROW=" + line, "DB=" + db});
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK_FALSE(contains(r.err, "early"));
  CHECK(Json::parse(r.out).at("imported") == 1);
}

TEST_CASE("cli: peppers counts the keys under each pepper, and use empties the legacy one",
          "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string legacy = dir.file("legacy");
  write_file(legacy, kLegacyPepper);
  create_key(db);
  const auto [pk, sk] = insert_legacy_key(db);

  Run r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "peppers"});
  REQUIRE(r.code == 0);
  const Json listed = Json::parse(r.out);
  REQUIRE(listed.size() == 2);
  CHECK(listed[0].at("pepper_id") == 1);
  CHECK(listed[0].at("keys") == 1);
  CHECK(listed[0].at("role") == "current");
  CHECK(listed[1].at("pepper_id") == apikeys::kLegacyPepperId);
  CHECK(listed[1].at("keys") == 1);
  CHECK(listed[1].at("role") == "legacy");
  // A run without the legacy pepper cannot verify those keys: "unknown" to it.
  r = run_cli({"--db", db, "peppers"});
  REQUIRE(r.code == 0);
  CHECK(keys_with_role(r, "unknown") == 1);
  CHECK(keys_with_role(r, "legacy") == 0);

  // Verifying the key rewrites its digest under the current pepper as the CLI exits.
  CHECK(verdict(run_cli({"--db", db, "--legacy-pepper-file", legacy, "verify", pk, sk})) ==
        "valid");
  r = run_cli({"--db", db, "--legacy-pepper-file", legacy, "peppers"});
  CHECK(keys_with_role(r, "legacy") == 0);
  CHECK(keys_with_role(r, "current") == 2);
  CHECK(verdict(run_cli({"--db", db, "verify", pk, sk})) == "valid");
  // Without the legacy pepper, its row is listed only while keys are left under it.
  r = run_cli({"--db", db, "peppers"});
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).size() == 1);
}

namespace {

// A fresh key pair of `format`.
apikeys::KeyPair new_pair(const apikeys::KeyFormat& format) {
  apikeys::CsprngKeyGenerator generator;
  return generator.generate(format);
}

// What scan prints for a secret: its prefix, 4 characters, "...".
std::string shown_secret(const std::string& secret) {
  const std::size_t prefix = secret.find("sk_") + 3;
  return secret.substr(0, prefix + 4) + "...";
}

// Runs the CLI with no pepper, no brand and nothing else in its environment.
Run run_bare(const std::vector<std::string>& args, const std::string& input = "") {
  std::vector<std::string> argv{APIKEYS_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  return apikeys_test::run_program(argv, {}, input);
}

}  // namespace

TEST_CASE("cli: scan finds keys in files and directories, never showing a secret", "[cli]") {
  TempDir dir;
  const std::string root = dir.file("repo");
  fs::create_directories(root + "/sub");
  fs::create_directories(root + "/.git");
  const apikeys::KeyFormat acme = apikeys::KeyFormat::branded("acme");
  const apikeys::KeyPair branded = new_pair(acme);
  const apikeys::KeyPair legacy = new_pair(apikeys::KeyFormat{});
  const std::string bsk(branded.secret_key.reveal());
  const std::string lsk(legacy.secret_key.reveal());
  write_file(root + "/a.txt",
             "line 1\n\nPUBLIC=" + branded.public_key + "\n\nsecret: \"" + bsk + "\"\n");
  write_file(root + "/sub/b.env", "API_KEY=" + lsk + "\n");
  write_file(root + "/.git/config", bsk + "\n");                          // skipped: .git
  write_file(root + "/blob.bin", std::string("\0\1\2", 3) + bsk + "\n");  // skipped: binary
  write_file(root + "/clean.txt", "nothing here: sk_short, acme_pk_short\n");

  // No pepper, no database (a --db that does not exist is not made), a bad brand: scan
  // reads none of them.
  const std::string db = dir.file("never.db");
  Run r = apikeys_test::run_program({APIKEYS_CLI_PATH, "--db", db, "scan", root},
                                    {"APIKEYS_PEPPER=zz", "APIKEYS_BRAND=NOT OK"});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.code == 1);
  CHECK(r.err.empty());
  CHECK(r.out == root + "/a.txt:3: branded public key " + branded.public_key + "\n" + root +
                     "/a.txt:5: branded secret key " + shown_secret(bsk) + "\n" + root +
                     "/sub/b.env:1: legacy secret key " + shown_secret(lsk) + "\n");
  CHECK_FALSE(contains(r.out, bsk));
  CHECK_FALSE(contains(r.out, lsk));
  CHECK_FALSE(fs::exists(db));

  // Nothing found: 0. A file given by name is scanned even when under .git.
  r = run_bare({"scan", root + "/clean.txt"});
  CHECK(r.code == 0);
  CHECK(r.out.empty());
  r = run_bare({"scan", root + "/.git/config"});
  CHECK(r.code == 1);

  // A path that cannot be read: 2, and the others are still scanned.
  r = run_bare({"scan", dir.file("missing"), root + "/sub"});
  CHECK(r.code == 2);
  CHECK(contains(r.err, dir.file("missing")));
  CHECK(r.out == root + "/sub/b.env:1: legacy secret key " + shown_secret(lsk) + "\n");
  // A path that may be a secret pasted in the wrong place is not shown.
  r = run_bare({"scan", bsk});
  CHECK(r.code == 2);
  CHECK_FALSE(contains(r.err, bsk));
  // Bytes outside printable ASCII in a path, and the backslash, are shown as \xNN, never
  // raw: in a path given that cannot be read, and in a file's name below a directory.
  r = run_bare({"scan", dir.file("no\nsuch\x1b[2J\xb9\\file")});
  CHECK(r.code == 2);
  CHECK(contains(r.err, "no\\x0asuch\\x1b[2J\\xb9\\x5cfile: "));
  CHECK_FALSE(contains(r.err, "\x1b"));
  CHECK_FALSE(contains(r.err, "\xb9"));
  const std::string odd = dir.file("odd");
  fs::create_directories(odd);
  write_file(odd + "/x\ty\x7f.env", "K=" + branded.public_key + "\n");
  r = run_bare({"scan", odd});
  CHECK(r.code == 1);
  CHECK(r.out == odd + "/x\\x09y\\x7f.env:1: branded public key " + branded.public_key + "\n");

  // A file below a directory named after a secret key: the name is not shown.
  const std::string named = dir.file("named");
  fs::create_directories(named + "/" + bsk);
  write_file(named + "/" + lsk + ".txt", "K=" + branded.public_key + "\n");
  write_file(named + "/" + bsk + "/in.txt", "K=" + branded.public_key + "\n");
  write_file(named + "/old_" + lsk, "K=" + branded.public_key + "\n");  // glued to a word
  r = run_bare({"scan", named});
  CHECK(r.code == 1);
  // In name order: acme_sk_... (the directory), old_sk_..., sk_....txt.
  CHECK(r.out == named + "/<not shown>/in.txt:1: branded public key " + branded.public_key + "\n" +
                     named + "/<not shown>:1: branded public key " + branded.public_key + "\n" +
                     named + "/<not shown>:1: branded public key " + branded.public_key + "\n");
  CHECK_FALSE(contains(r.out, bsk.substr(10)));
  CHECK_FALSE(contains(r.out, lsk.substr(10)));

  // "-" is stdin.
  r = run_bare({"scan", "-"}, "a\nb " + branded.public_key + "\n");
  CHECK(r.code == 1);
  CHECK(r.out == "-:2: branded public key " + branded.public_key + "\n");
  // No path: usage error.
  CHECK(run_bare({"scan"}).code == 2);
}

TEST_CASE("cli: scan finds a key across the edge of the chunks it reads, once", "[cli]") {
  // scan reads 1 MiB at a time: put keys on every side of that edge, at several shifts.
  constexpr std::size_t kChunk = std::size_t{1} << 20;
  const apikeys::KeyFormat brand16 = apikeys::KeyFormat::branded("abcdefghijklmnop");
  TempDir dir;
  for (const std::size_t shift : {0, 1, 7, 23, 41, 58, 60, 77}) {
    std::string text;
    std::uint64_t line = 1;
    std::string expected;
    const std::string path = dir.file("big" + std::to_string(shift) + ".txt");
    while (text.size() + 100 < kChunk - 200 - shift) {
      text += std::string(99, 'x') + "\n";
      ++line;
    }
    text += std::string(kChunk - 200 - shift - text.size(), 'y');
    for (int i = 0; i < 12; ++i) {
      const apikeys::KeyPair p = new_pair(i % 3 == 0 ? brand16 : apikeys::KeyFormat{});
      const std::string secret(p.secret_key.reveal());
      const bool show_secret = i % 2 == 1;
      text += i % 4 == 3 ? "\n" : " ";
      if (i % 4 == 3) ++line;
      text += show_secret ? secret : p.public_key;
      expected +=
          path + ":" + std::to_string(line) + ": " + (i % 3 == 0 ? "branded " : "legacy ") +
          (show_secret ? "secret key " + shown_secret(secret) : "public key " + p.public_key) +
          "\n";
    }
    text += "\n";
    write_file(path, text);
    const Run r = run_bare({"scan", path});
    INFO("shift " << shift << "\nstderr: " << r.err);
    CHECK(r.code == 1);
    CHECK(r.out == expected);
  }
}

TEST_CASE("cli: scan as a git pre-commit hook refuses a commit that adds a key", "[cli]") {
  if (std::system("git --version >/dev/null 2>&1") != 0) {
    const char* ci = std::getenv("CI");
    REQUIRE_FALSE((ci != nullptr && std::string(ci) == "true"));  // CI has git: never skip
    std::cout << "cli: pre-commit hook test skipped: no git\n";
    return;
  }
  TempDir dir;
  const std::string repo = dir.file("repo");
  fs::create_directories(repo);
  const std::string hook = repo + "/.git/hooks/pre-commit";
  // What README.md tells a project to install: scan the staged content of the files the
  // commit adds or changes (not the working copy, which may differ).
  const std::string hook_text =
      "#!/bin/sh\n"
      "tmp=$(mktemp -d) || exit 2\n"
      "trap 'rm -rf \"$tmp\"' EXIT\n"
      "git diff --cached --name-only --diff-filter=ACMR -z |\n"
      "  xargs -0 -r git checkout-index --prefix=\"$tmp/\" -- || exit 2\n"
      "\"$APIKEYS\" scan -- \"$tmp\"\n";
  const char* path_env = std::getenv("PATH");
  const std::vector<std::string> env{
      "PATH=" + std::string(path_env != nullptr ? path_env : "/usr/bin:/bin"),
      "APIKEYS=" APIKEYS_CLI_PATH, "HOME=" + dir.file(""), "GIT_CONFIG_NOSYSTEM=1"};
  const auto git = [&](const std::string& command) {
    return apikeys_test::run_program(
        {"/bin/sh", "-c",
         "cd '" + repo + "' && git -c user.name=t -c user.email=t@example.com " + command},
        env);
  };
  REQUIRE(git("init -q .").code == 0);
  write_file(hook, hook_text);
  fs::permissions(hook, fs::perms::owner_all);

  write_file(repo + "/README", "no keys\n");
  Run r = git("add README && git -c user.name=t -c user.email=t@example.com commit -q -m clean");
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.code == 0);

  const apikeys::KeyPair key = new_pair(apikeys::KeyFormat::branded("acme"));
  const std::string secret(key.secret_key.reveal());
  write_file(repo + "/config.py", "\n\nAPI_KEY = \"" + secret + "\"\n");
  r = git("add config.py && git -c user.name=t -c user.email=t@example.com commit -q -m leak");
  CHECK(r.code != 0);
  CHECK(contains(r.out + r.err, "config.py:3: branded secret key " + shown_secret(secret)));
  CHECK_FALSE(contains(r.out + r.err, secret));
  CHECK(git("log --oneline").out.find("leak") == std::string::npos);

  // Staged with the key, then cleaned in the working copy only: still refused.
  write_file(repo + "/config.py", "\n\nAPI_KEY = os.environ[\"API_KEY\"]\n");
  r = git("commit -q -m leak-staged");
  CHECK(r.code != 0);
  CHECK(contains(r.out + r.err, "config.py:3: branded secret key " + shown_secret(secret)));
  // A file whose name looks like an option is scanned, not taken as one.
  write_file(repo + "/--db=x", "K=" + secret + "\n");
  r =
      git("add config.py -- '--db=x' && git -c user.name=t -c user.email=t@example.com "
          "commit -q -m leak-option-name");
  CHECK(r.code != 0);
  CHECK(contains(r.out + r.err, "--db=x:1: branded secret key"));
  CHECK(git("log --oneline").out.find("leak") == std::string::npos);
}

namespace {

// Expects exit 2 with a message on stderr holding `says`, nothing on stdout.
void expect_refused(const std::vector<std::string>& args, const std::string& says) {
  const Run r = run_cli(args);
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(r.out.empty());
  CHECK(contains(r.err, says));
}

// True when the SQLite store keeps rate limits and credits (create with a rate limit
// and credits succeeds). SqliteStore keeps them: a store that stopped would fail here,
// never skip the tests that need them.
bool sqlite_keeps_admission(const std::string& db) {
  const Run r = run_cli({"--db", db, "create", "--account", kOtherAccount, "--title", "probe",
                         "--rate-limit", "probe=1/1s", "--credits", "1"});
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  return true;
}

}  // namespace

TEST_CASE("cli: bad rate limits and credits are refused before anything is written", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::vector<std::string> create{"--db",   db,        "create", "--account",
                                        kAccount, "--title", "t"};
  SECTION("rate limits") {
    for (const char* spec : {"a=0/1m", "a=-1/1m", "a=1000000001/1m", "a=1/0s", "a=1/2d", "a=1/25h",
                             "a=1/86401s", "a=1/1m:0", "a=1/1m:-1", "nonsense", "a=1/1x", "a=1",
                             "=1/1m", "A=1/1m", "-a=1/1m", "a=1/m"}) {
      INFO(spec);
      expect_refused(plus(create, {"--rate-limit", spec}), "--rate-limit: ");
    }
    expect_refused(plus(create, {"--rate-limit", "a=1/1m", "--rate-limit", "a=2/1h"}), "same name");
    std::vector<std::string> many = create;
    for (int i = 0; i < 17; ++i) {
      many.push_back("--rate-limit");
      many.push_back("l" + std::to_string(i) + "=1/1s");
    }
    expect_refused(many, "at most 16");
  }
  SECTION("a secret or the pepper in a rate limit is refused unseen") {
    const std::string sk = "sk_abcdefghijklmnopqrstuvwxyz012345";
    for (const std::string& spec : {sk + "=1/1m", kPepperHex + "=1/1m"}) {
      const Run r = run_cli(plus(create, {"--rate-limit", spec}));
      CHECK(r.code == 2);
      CHECK(contains(r.err, "--rate-limit"));
      CHECK_FALSE(contains(r.out + r.err, spec.substr(3, 30)));
    }
  }
  SECTION("credits") {
    for (const char* n : {"-1", "9007199254740993", "18446744073709551616", "x", "1.5", ""}) {
      INFO(n);
      expect_refused(plus(create, {"--credits", n}),
                     "--credits must be a whole number from 0 to 9007199254740992");
    }
  }
  SECTION("refills") {
    const std::vector<std::string> credits = plus(create, {"--credits", "10"});
    for (const char* n : {"0", "-1", "9007199254740993", "x"}) {
      INFO(n);
      expect_refused(plus(credits, {"--refill-amount", n, "--refill-interval", "daily"}),
                     "--refill-amount must be a whole number from 1");
    }
    expect_refused(plus(credits, {"--refill-amount", "5", "--refill-interval", "weekly"}),
                   "--refill-interval must be daily or monthly");
    expect_refused(plus(credits, {"--refill-amount", "5", "--refill-interval", "daily",
                                  "--refill-mode", "double"}),
                   "--refill-mode must be reset or add");
    expect_refused(plus(credits, {"--refill-amount", "5"}), "go together");
    expect_refused(plus(credits, {"--refill-interval", "daily"}), "go together");
    expect_refused(plus(credits, {"--refill-mode", "add"}), "need --refill-amount");
    expect_refused(plus(credits, {"--refill-cap", "5"}), "need --refill-amount");
    expect_refused(
        plus(credits, {"--refill-amount", "5", "--refill-interval", "daily", "--refill-cap", "9"}),
        "only with --refill-mode add");
    expect_refused(plus(credits, {"--refill-amount", "5", "--refill-interval", "daily",
                                  "--refill-mode", "add", "--refill-cap", "0"}),
                   "--refill-cap must be a whole number from 1");
    expect_refused(plus(create, {"--refill-amount", "5", "--refill-interval", "daily"}),
                   "needs --credits");
  }
  CHECK_FALSE(fs::exists(db));  // refused before the database was made
}

TEST_CASE("cli: update --no-refill on a key without credits clears nothing, the rest applies",
          "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string key_id = create_key(db).at("key_id").get<std::string>();
  const std::vector<std::string> update = key_args(db, "update", key_id);
  const Run alone = run_cli(plus(update, {"--no-refill"}));
  INFO("stderr: " << alone.err);
  REQUIRE(alone.code == 0);
  CHECK(Json::parse(alone.out).at("credits").is_null());
  CHECK(Json::parse(alone.out).at("version") == 1);  // nothing to write
  const Run r = run_cli(plus(update, {"--no-refill", "--title", "Renamed"}));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  const Json k = Json::parse(r.out);
  CHECK(k.at("title") == "Renamed");
  CHECK(k.at("credits").is_null());
  CHECK(k.at("version") == 2);
}

TEST_CASE("cli: bad rate-limit, credit and cost options of update, credits and verify", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const Json created = create_key(db);
  const std::string key_id = created.at("key_id").get<std::string>();
  const std::vector<std::string> update = key_args(db, "update", key_id);
  SECTION("update") {
    expect_refused(plus(update, {"--rate-limit", "a=1/1m", "--clear-rate-limits"}), "excludes");
    expect_refused(plus(update, {"--credits", "1", "--no-credits"}), "excludes");
    expect_refused(
        plus(update, {"--refill-amount", "1", "--refill-interval", "daily", "--no-refill"}),
        "excludes");
    expect_refused(
        plus(update, {"--no-credits", "--refill-amount", "1", "--refill-interval", "daily"}),
        "--no-credits removes the refill");
    expect_refused(plus(update, {"--rate-limit", "a=1/2d"}), "1 s to 1 day");
    expect_refused(plus(update, {"--credits", "9007199254740993"}), "--credits");
    expect_refused(plus(update, {"--refill-amount", "0", "--refill-interval", "daily"}),
                   "--refill-amount");
  }
  SECTION("a refill for a key without credits is a conflict") {
    const Run r = run_cli(
        plus(update, {"--refill-amount", "5", "--refill-interval", "monthly", "--title", "T2"}));
    INFO("stderr: " << r.err);
    CHECK(r.code == 5);
    CHECK(r.out.empty());
    CHECK(contains(r.err, "the key has no credits"));
    // Nothing was written: the title is as it was.
    const Run got = run_cli(key_args(db, "get", key_id));
    REQUIRE(got.code == 0);
    CHECK(Json::parse(got.out).at("title") != "T2");
  }
  SECTION("credits") {
    const std::vector<std::string> credits = key_args(db, "credits", key_id);
    expect_refused(credits, "exactly one of --set N and --add N");
    expect_refused(plus(credits, {"--set", "1", "--add", "1"}), "excludes");
    for (const char* n : {"-1", "9007199254740993", "x"}) {
      INFO(n);
      expect_refused(plus(credits, {"--set", n}), "--set must be a whole number from 0 to");
    }
    for (const char* n : {"9007199254740993", "-9007199254740993", "x", "-", "--1", "+1"}) {
      INFO(n);
      expect_refused(plus(credits, {"--add=" + std::string(n)}),
                     "--add must be a whole number from -9007199254740992");
    }
  }
  SECTION("verify --cost") {
    const std::string token = created.at("public_key").get<std::string>() + ":" +
                              created.at("secret_key").get<std::string>();
    for (const char* n : {"-1", "x", "9007199254740993"}) {
      INFO(n);
      const Run r = run_cli({"--db", db, "verify", "-", "--cost", n}, kPepperHex, token + "\n");
      CHECK(r.code == 2);
      CHECK(contains(r.err, "--cost must be a whole number from 0"));
    }
    // A key without limits or credits: valid at any cost, with no balance and no limits.
    for (const char* n : {"0", "1", "1000"}) {
      const Run r = run_cli({"--db", db, "verify", "-", "--cost", n}, kPepperHex, token + "\n");
      INFO(n << " stderr: " << r.err);
      REQUIRE(r.code == 0);
      const Json v = Json::parse(r.out);
      CHECK(v.at("valid") == true);
      CHECK(v.at("remaining").is_null());
      CHECK(v.at("limits") == Json::array());
    }
  }
  const Json k = run_json(key_args(db, "get", key_id));
  CHECK(k.at("version") == 1);  // nothing written
  CHECK(k.at("lineage_id") == key_id);
  CHECK(k.at("rate_limits") == Json::array());
  CHECK(k.at("credits").is_null());
}

TEST_CASE("cli: rate limits and credits on create, get, list and update", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  if (!sqlite_keeps_admission(db)) return;
  Json k =
      create_key(db, kAccount,
                 {"--rate-limit", "per-second=10/1s:20", "--rate-limit", "daily=1000/1d",
                  "--credits", "9007199254740992", "--refill-amount", "500", "--refill-interval",
                  "monthly", "--refill-mode", "add", "--refill-cap", "2000"});
  check_key_fields(k);
  const std::string key_id = k.at("key_id").get<std::string>();
  CHECK(k.at("lineage_id") == key_id);
  const Json limits = Json::parse(R"([
    {"name": "daily", "limit": 1000, "period_ms": 86400000, "burst": 1000},
    {"name": "per-second", "limit": 10, "period_ms": 1000, "burst": 20}])");
  CHECK(k.at("rate_limits") == limits);
  const Json c = k.at("credits");
  CHECK(c.at("remaining") == 9007199254740992ULL);
  CHECK(c.at("refill") ==
        Json::parse(R"({"amount": 500, "interval": "monthly", "mode": "add", "cap": 2000})"));
  const std::string next = c.at("next_refill_at").get<std::string>();
  CHECK(next.size() == 24);
  CHECK(next.substr(7) == "-01T00:00:00.000Z");  // the 1st of next month, UTC
  // get and list show the same.
  const Json got = run_json(key_args(db, "get", key_id));
  CHECK(got.at("rate_limits") == limits);
  CHECK(got.at("credits") == c);
  const Json listed = run_json({"--db", db, "list", "--account", kAccount});
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].at("credits") == c);

  const std::vector<std::string> update = key_args(db, "update", key_id);
  // A reset refill shows no cap; a daily one refills at the next 00:00 UTC.
  k = run_json(
      plus(update, {"--credits", "7", "--refill-amount", "3", "--refill-interval", "daily"}));
  CHECK(k.at("credits").at("remaining") == 7);
  CHECK(k.at("credits").at("refill") ==
        Json::parse(R"({"amount": 3, "interval": "daily", "mode": "reset", "cap": null})"));
  CHECK(k.at("credits").at("next_refill_at").get<std::string>().substr(10) == "T00:00:00.000Z");
  k = run_json(plus(update, {"--no-refill"}));
  CHECK(k.at("credits").at("remaining") == 7);
  CHECK(k.at("credits").at("refill").is_null());
  CHECK(k.at("credits").at("next_refill_at").is_null());
  k = run_json(plus(update, {"--rate-limit", "hourly=5/1h"}));
  CHECK(k.at("rate_limits") ==
        Json::parse(R"([{"name": "hourly", "limit": 5, "period_ms": 3600000, "burst": 5}])"));
  k = run_json(plus(update, {"--clear-rate-limits", "--no-credits"}));
  CHECK(k.at("rate_limits") == Json::array());
  CHECK(k.at("credits").is_null());
  // --credits gives a key without credits a balance again.
  k = run_json(plus(update, {"--credits", "0"}));
  CHECK(k.at("credits").at("remaining") == 0);
}

TEST_CASE("cli: credits --set and --add", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  if (!sqlite_keeps_admission(db)) return;
  const std::string key_id = create_key(db).at("key_id").get<std::string>();
  const std::vector<std::string> credits = key_args(db, "credits", key_id);
  // A key of another account is no key.
  CHECK(run_cli(plus(key_args(db, "credits", key_id, kOtherAccount), {"--set", "1"})).code == 3);
  // --add needs credits to add to.
  const Run r = run_cli(plus(credits, {"--add", "5"}));
  CHECK(r.code == 5);
  CHECK(contains(r.err, "no credits to add to"));
  Json k = run_json(plus(credits, {"--set", "5"}));
  check_key_fields(k);
  CHECK(k.at("key_id") == key_id);
  CHECK(k.at("credits").at("remaining") == 5);
  k = run_json(plus(credits, {"--add", "-2"}));
  CHECK(k.at("credits").at("remaining") == 3);
  k = run_json(plus(credits, {"--add=10"}));
  CHECK(k.at("credits").at("remaining") == 13);
  k = run_json(plus(credits, {"--add", "-9007199254740992"}));
  CHECK(k.at("credits").at("remaining") == 0);  // clamped
  k = run_json(plus(credits, {"--set", "9007199254740992"}));
  CHECK(k.at("credits").at("remaining") == 9007199254740992ULL);
  k = run_json(plus(credits, {"--add", "1"}));
  CHECK(k.at("credits").at("remaining") == 9007199254740992ULL);  // clamped
  CHECK(k.at("version") == 1);                                    // credits are not versioned
  CHECK(run_json(key_args(db, "get", key_id)).at("credits").at("remaining") == 9007199254740992ULL);
}

TEST_CASE("cli: verify reports limits and credits: refusals exit 1", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  if (!sqlite_keeps_admission(db)) return;
  const Json created = create_key(
      db, kAccount,
      {"--rate-limit", "per-minute=1/1m", "--rate-limit", "per-day=100/1d", "--credits", "3"});
  const std::string token = created.at("public_key").get<std::string>() + ":" +
                            created.at("secret_key").get<std::string>();
  const auto verify = [&](const std::string& cost) {
    return run_cli({"--db", db, "verify", "-", "--cost", cost}, kPepperHex, token + "\n");
  };
  // Each run is a new process: its rate-limit state starts afresh, the credits do not.
  Run r = verify("1");
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  Json v = Json::parse(r.out);
  CHECK(v.at("valid") == true);
  CHECK(v.at("remaining") == 2);
  REQUIRE(v.at("limits").size() == 2);
  CHECK(v.at("limits")[0].at("name") == "per-day");
  CHECK(v.at("limits")[0].at("remaining") == 99);
  CHECK(v.at("limits")[1].at("name") == "per-minute");
  CHECK(v.at("limits")[1].at("remaining") == 0);
  CHECK(v.at("limits")[1].at("reset_ms") == 60000);

  // Cost 2 is more than per-minute's burst of 1: rate limited, nothing charged, and no
  // wait would help (null).
  r = verify("2");
  CHECK(r.code == 1);
  v = Json::parse(r.out);
  CHECK(v.at("valid") == false);
  CHECK(v.at("code") == "rate_limited");
  CHECK(v.at("limit") == "per-minute");
  CHECK(v.at("retry_after_ms").is_null());
  CHECK_FALSE(v.contains("remaining"));

  // Cost 0 reports the balance without spending it.
  r = verify("0");
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).at("remaining") == 2);

  run_json(plus(key_args(db, "update", created.at("key_id").get<std::string>()),
                {"--clear-rate-limits"}));
  r = verify("3");
  CHECK(r.code == 1);
  v = Json::parse(r.out);
  CHECK(v.at("code") == "usage_exceeded");
  CHECK(v.at("remaining") == 2);
  CHECK_FALSE(v.contains("limits"));
  r = verify("2");
  REQUIRE(r.code == 0);
  CHECK(Json::parse(r.out).at("remaining") == 0);
  r = verify("1");
  CHECK(r.code == 1);
  v = Json::parse(r.out);
  CHECK(v.at("code") == "usage_exceeded");
  CHECK(v.at("remaining") == 0);
  CHECK_FALSE(contains(r.out + r.err, created.at("secret_key").get<std::string>()));
}

namespace {

// The login name of this process's session, when it has one: the CLI's default actor
// comes from it before USER.
std::optional<std::string> session_login() {
  std::array<char, 257> name{};
  if (::getlogin_r(name.data(), name.size()) != 0 || name[0] == '\0') return std::nullopt;
  return std::string(name.data());
}

// The account's audit events, newest first, read page by page with --cursor.
std::vector<Json> audit_events(const std::string& db, const std::vector<std::string>& extra = {}) {
  std::vector<Json> events;
  std::string cursor;
  for (int pages = 0; pages < 100; ++pages) {
    std::vector<std::string> args = plus({"--db", db, "audit", "--account", kAccount}, extra);
    if (!cursor.empty()) args.insert(args.end(), {"--cursor", cursor});
    const Json page = run_json(args);
    for (const Json& e : page.at("events")) events.push_back(e);
    if (page.at("next_cursor").is_null()) return events;
    cursor = page.at("next_cursor").get<std::string>();
  }
  FAIL("audit never reached its last page");
  return events;
}

}  // namespace

TEST_CASE("cli: a malformed --actor or a refused --reason exits 2 and writes nothing", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string sk = "sk_abcdefghijklmnopqrstuvwxyz012345";
  const std::vector<std::vector<std::string>> refused{
      {"--actor", "alice"},        // no TYPE:
      {"--actor", "admin:alice"},  // not a type
      {"--actor", ":alice"},       // no type
      {"--actor", "user:"},        // no id
      {"--actor", ""},             // nothing
      {"--actor", "User:alice"},   // types are lower case
      {"--actor", "user:" + std::string(257, 'a')},
      {"--actor", "user:al\x01ice"},
      {"--actor", "user:\xff\xfe"},
      {"--actor", "service:" + sk},
      {"--actor", "service:" + kPepperHex},
      {"--reason", std::string(1025, 'r')},
      {"--reason", "line one\nline two"},
      {"--reason", "bell\x07"},
      {"--reason", "c1 \xc2\x85 control"},
      {"--reason", "bad \xc0\xaf utf-8"},
      {"--reason", "one\xE2\x80\xA8two"},      // U+2028 LINE SEPARATOR
      {"--reason", "hidden\xE2\x80\x8Bjoin"},  // U+200B ZERO WIDTH SPACE
      {"--actor", "user:\xE2\x80\xAEnimda"},   // U+202E RIGHT-TO-LEFT OVERRIDE
      {"--reason", "leaked " + sk},
      {"--reason", "pepper " + kPepperHex},
  };
  // create: not even the database file is made.
  for (const std::vector<std::string>& extra : refused) {
    INFO(extra[0] << " (" << extra[1].size() << " bytes)");
    const Run r =
        run_cli(plus({"--db", db, "create", "--account", kAccount, "--title", "t"}, extra));
    CHECK(r.code == 2);
    CHECK(r.out.empty());
    CHECK(contains(r.err, extra[0]));
    CHECK_FALSE(contains(r.err, sk.substr(3)));
    CHECK_FALSE(contains(r.err, kPepperHex));
    CHECK_FALSE(fs::exists(db));
  }
  // Every other command that changes keys: the key is left as it was.
  const Json created = create_key(db, kAccount, {"--credits", "10"});
  const std::string key_id = created.at("key_id").get<std::string>();
  const std::vector<std::vector<std::string>> commands{
      plus(key_args(db, "update", key_id), {"--title", "changed"}),
      key_args(db, "disable", key_id),
      key_args(db, "revoke", key_id),
      key_args(db, "rotate", key_id),
      key_args(db, "delete", key_id),
      plus(key_args(db, "credits", key_id), {"--set", "5"}),
      {"--db", db, "revoke-all", "--account", kAccount},
  };
  for (const std::vector<std::string>& command : commands) {
    for (const std::vector<std::string>& extra :
         {refused[0], refused[3], refused[11], refused[13]}) {
      INFO(command[2] << " " << extra[0]);
      const Run r = run_cli(plus(command, extra));
      CHECK(r.code == 2);
      CHECK(r.out.empty());
      CHECK(contains(r.err, extra[0]));
    }
  }
  const Json k = run_json(key_args(db, "get", key_id));
  CHECK(k.at("title") == "CI key");
  CHECK(k.at("status") == "active");
  CHECK(k.at("version") == 1);
  CHECK(k.at("rotated_to").is_null());
  CHECK(k.at("credits").at("remaining") == 10);
  // import, before the file is read.
  const std::string legacy = dir.file("legacy-pepper");
  std::ofstream(legacy) << "legacy secret of the python service\n";
  const std::string rows = dir.file("rows.jsonl");
  std::ofstream(rows) << "";
  const Run r =
      run_cli({"--db", db, "--legacy-pepper-file", legacy, "import", rows, "--actor", "nobody"});
  CHECK(r.code == 2);
  CHECK(contains(r.err, "--actor"));
}

TEST_CASE("cli: --help lists audit, audit-prune, and --actor and --reason where they apply",
          "[cli]") {
  Run r = run_cli({"--help"});
  CHECK(r.code == 0);
  CHECK(contains(r.out, "audit"));
  CHECK(contains(r.out, "audit-prune"));
  r = run_cli({"audit", "--help"});
  CHECK(r.code == 0);
  for (const char* option : {"--account", "--key-id", "--since", "--limit", "--cursor"}) {
    INFO(option);
    CHECK(contains(r.out, option));
  }
  r = run_cli({"audit-prune", "--help"});
  CHECK(r.code == 0);
  CHECK(contains(r.out, "--before"));
  for (const char* command : {"create", "update", "credits", "disable", "enable", "rotate",
                              "revoke", "revoke-all", "delete", "import"}) {
    INFO(command);
    r = run_cli({command, "--help"});
    CHECK(r.code == 0);
    CHECK(contains(r.out, "--actor"));
    CHECK(contains(r.out, "--reason"));
  }
  for (const char* command : {"list", "get", "verify", "peppers", "audit", "audit-prune"}) {
    INFO(command);
    r = run_cli({command, "--help"});
    CHECK_FALSE(contains(r.out, "--actor"));
  }
}

TEST_CASE("cli: each change is audited with its --actor and --reason, by default the user",
          "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  // The default actor: the session's login name, else USER.
  const Run made = run_cli_env({"--db", db, "create", "--account", kAccount, "--title", "CI key"},
                               {"USER=cli-test-user"});
  INFO("stderr: " << made.err);
  REQUIRE(made.code == 0);
  const std::string key_id = Json::parse(made.out).at("key_id").get<std::string>();
  // Explicit actors; the ID is everything after the first ':'.
  run_json(plus(key_args(db, "disable", key_id),
                {"--actor", "service:billing:eu-1", "--reason", "invoice 7 unpaid"}));
  run_json(plus(key_args(db, "enable", key_id), {"--actor", "system:cron"}));
  run_json(plus(key_args(db, "credits", key_id),
                {"--set", "5", "--actor", "user:alice", "--reason", "trial: 5 calls"}));
  // A refused --actor adds no event.
  CHECK(run_cli(plus(key_args(db, "revoke", key_id), {"--actor", "robot:r2"})).code == 2);

  const std::vector<Json> events = audit_events(db);
  REQUIRE(events.size() == 4);
  for (const Json& e : events) {
    INFO(e.dump());
    for (const char* f : {"event_id", "time", "action", "reason", "account_id"}) {
      CHECK(e.at(f).is_string());
    }
    CHECK(e.at("account_id") == kAccount);
    CHECK(e.at("key_id") == key_id);
    CHECK(e.at("actor").at("detail") == "");
    CHECK(e.at("before").is_object());
    CHECK(e.at("after").is_object());
    CHECK(e.at("time").get<std::string>().back() == 'Z');
  }
  // Newest first.
  CHECK(events[0].at("action") == "set_credits");
  CHECK(events[0].at("actor").at("type") == "user");
  CHECK(events[0].at("actor").at("id") == "alice");
  CHECK(events[0].at("reason") == "trial: 5 calls");
  CHECK(events[0].at("after").at("credits").at("remaining") == 5);
  CHECK(events[1].at("action") == "enable");
  CHECK(events[1].at("actor").at("type") == "system");
  CHECK(events[1].at("actor").at("id") == "cron");
  CHECK(events[1].at("reason") == "");
  CHECK(events[2].at("action") == "disable");
  CHECK(events[2].at("actor").at("type") == "service");
  CHECK(events[2].at("actor").at("id") == "billing:eu-1");
  CHECK(events[2].at("reason") == "invoice 7 unpaid");
  CHECK(events[2].at("before").at("status") == "active");
  CHECK(events[2].at("after").at("status") == "disabled");
  const Json& create = events[3];
  CHECK(create.at("action") == "create");
  CHECK(create.at("actor").at("type") == "user");
  const std::string id = create.at("actor").at("id").get<std::string>();
  const std::optional<std::string> login = session_login();
  CHECK((id == "cli-test-user" || (login && id == *login)));
  CHECK(create.at("before") == Json::object());
  CHECK(create.at("after").at("key_id") == key_id);
  CHECK(create.at("after").at("title") == "CI key");
  CHECK_FALSE(contains(create.dump(), Json::parse(made.out).at("secret_key").get<std::string>()));

  // Without USER: still a user, named by the session or the uid (never empty).
  const Json other = create_key(db, kOtherAccount);
  const Json page = run_json({"--db", db, "audit", "--account", kOtherAccount});
  REQUIRE(page.at("events").size() == 1);
  CHECK(page.at("events")[0].at("actor").at("type") == "user");
  CHECK_FALSE(page.at("events")[0].at("actor").at("id").get<std::string>().empty());
  CHECK(page.at("events")[0].at("key_id") == other.at("key_id"));
}

TEST_CASE("cli: every command that changes keys passes on its own --actor and --reason", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string legacy = dir.file("legacy");
  write_file(legacy, kLegacyPepper + "\n");
  std::size_t seen = 0;
  int step = 0;
  // Runs `args` with --actor service:name-N and --reason R-N (N counts the steps),
  // REQUIREs that it wrote `count` events, each with that actor and reason, and returns
  // them, newest first.
  const auto audited = [&](std::vector<std::string> args, std::size_t count) {
    ++step;
    const std::string id = "name-" + std::to_string(step);
    const std::string reason = "R-" + std::to_string(step);
    args.insert(args.end(), {"--actor", "service:" + id, "--reason", reason});
    const Run r = run_cli(args);
    INFO("step " << step << ": " << args[2] << "\nstdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.code == 0);
    std::vector<Json> events = audit_events(db);
    REQUIRE(events.size() == seen + count);
    events.resize(count);
    seen += count;
    for (const Json& e : events) {
      INFO(e.dump());
      CHECK(e.at("actor").at("type") == "service");
      CHECK(e.at("actor").at("id") == id);
      CHECK(e.at("reason") == reason);
      CHECK(e.at("account_id") == kAccount);
    }
    return std::make_pair(Json::parse(r.out), events);
  };
  const auto key_id_of = [](const Json& out) { return out.at("key_id").get<std::string>(); };

  Json made;
  std::vector<Json> events;
  std::tie(made, events) =
      audited({"--db", db, "create", "--account", kAccount, "--title", "CI key"}, 1);
  const std::string a = key_id_of(made);
  CHECK(events[0].at("action") == "create");
  CHECK(events[0].at("key_id") == a);

  std::tie(std::ignore, events) = audited(plus(key_args(db, "update", a), {"--title", "new"}), 1);
  CHECK(events[0].at("action") == "update");
  CHECK(events[0].at("key_id") == a);
  CHECK(events[0].at("after").at("title") == "new");

  std::tie(std::ignore, events) = audited(plus(key_args(db, "credits", a), {"--set", "5"}), 1);
  CHECK(events[0].at("action") == "set_credits");
  CHECK(events[0].at("key_id") == a);

  std::tie(std::ignore, events) = audited(plus(key_args(db, "credits", a), {"--add", "2"}), 1);
  CHECK(events[0].at("action") == "add_credits");
  CHECK(events[0].at("key_id") == a);
  CHECK(events[0].at("after").at("credits").at("remaining") == 7);

  std::tie(std::ignore, events) = audited(key_args(db, "disable", a), 1);
  CHECK(events[0].at("action") == "disable");
  CHECK(events[0].at("key_id") == a);

  std::tie(std::ignore, events) = audited(key_args(db, "enable", a), 1);
  CHECK(events[0].at("action") == "enable");
  CHECK(events[0].at("key_id") == a);

  // rotate: the old key's rotate event and the successor's create event.
  Json rotated;
  std::tie(rotated, events) = audited(key_args(db, "rotate", a), 2);
  const std::string successor = key_id_of(rotated.at("new"));
  std::vector<std::string> actions;
  for (const Json& e : events) {
    actions.push_back(e.at("action").get<std::string>());
    CHECK(e.at("key_id") == (e.at("action") == "rotate" ? a : successor));
  }
  std::sort(actions.begin(), actions.end());
  CHECK(actions == std::vector<std::string>{"create", "rotate"});

  std::tie(made, events) =
      audited({"--db", db, "create", "--account", kAccount, "--title", "second"}, 1);
  const std::string b = key_id_of(made);
  CHECK(events[0].at("action") == "create");
  CHECK(events[0].at("key_id") == b);

  std::tie(std::ignore, events) = audited(key_args(db, "revoke", b), 1);
  CHECK(events[0].at("action") == "revoke");
  CHECK(events[0].at("key_id") == b);

  std::tie(std::ignore, events) = audited(key_args(db, "delete", b), 1);
  CHECK(events[0].at("action") == "remove");
  CHECK(events[0].at("key_id") == b);

  std::tie(made, events) =
      audited({"--db", db, "create", "--account", kAccount, "--title", "third"}, 1);
  const std::string c = key_id_of(made);

  // revoke-all: one event per key it revoked (a, rotated but not revoked, among them).
  Json revoked;
  std::tie(revoked, events) = audited({"--db", db, "revoke-all", "--account", kAccount}, 3);
  CHECK(revoked.at("revoked") == 3);
  std::vector<std::string> keys;
  for (const Json& e : events) {
    INFO(e.dump());
    CHECK(e.at("action") == "revoke_all");
    keys.push_back(e.at("key_id").get<std::string>());
    for (const char* f : {"status", "updated_at", "version"}) {
      INFO(f);
      CHECK(e.at("before").contains(f));
      CHECK(e.at("after").contains(f));
    }
    CHECK(e.at("before").at("status") == "active");
    CHECK(e.at("after").at("status") == "revoked");
    CHECK(e.at("after").at("version") > e.at("before").at("version"));
  }
  std::sort(keys.begin(), keys.end());
  std::vector<std::string> expected{a, successor, c};
  std::sort(expected.begin(), expected.end());
  CHECK(keys == expected);

  // import: one event per imported key.
  const std::string first_row = legacy_row().first;
  const std::string second_row = legacy_row().first;
  const std::string export_file = dir.file("api_keys.jsonl");
  write_file(export_file, first_row + "\n" + second_row + "\n");
  Json report;
  std::tie(report, events) =
      audited({"--db", db, "--legacy-pepper-file", legacy, "import", export_file}, 2);
  CHECK(report.at("imported") == 2);
  keys.clear();
  for (const Json& e : events) {
    CHECK(e.at("action") == "import");
    keys.push_back(e.at("key_id").get<std::string>());
  }
  std::sort(keys.begin(), keys.end());
  expected = {Json::parse(first_row).at("key_id").get<std::string>(),
              Json::parse(second_row).at("key_id").get<std::string>()};
  std::sort(expected.begin(), expected.end());
  CHECK(keys == expected);
}

namespace {

// The key ids of the account's events at or after `since`, newest first.
std::vector<std::string> key_ids_since(const std::string& db, const std::string& since) {
  std::vector<std::string> ids;
  for (const Json& e : audit_events(db, {"--since", since}))
    ids.push_back(e.at("key_id").get<std::string>());
  return ids;
}

}  // namespace

TEST_CASE("cli: audit --since honours the sign of a UTC offset", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string early = create_key(db).at("key_id").get<std::string>();
  const std::string late = create_key(db).at("key_id").get<std::string>();
  {
    // 2026-01-01T10:00:00Z and 2026-01-01T12:00:00Z.
    SQLite::Database raw(db, SQLite::OPEN_READWRITE);
    SQLite::Statement set(raw, "UPDATE audit_events SET time_ms = ? WHERE key_id = ?");
    for (const auto& [ms, key] : {std::pair<std::int64_t, std::string>{1767261600000, early},
                                  std::pair<std::int64_t, std::string>{1767268800000, late}}) {
      set.bind(1, ms);
      set.bind(2, key);
      REQUIRE(set.exec() == 1);
      set.reset();
    }
  }
  REQUIRE(key_ids_since(db, "2026-01-01T10:00:00Z") == std::vector<std::string>{late, early});
  // 11:00Z both ways: only the later event. Read with the sign flipped they would be
  // 15:00Z (neither) and 07:00Z (both).
  CHECK(key_ids_since(db, "2026-01-01T13:00:00+02:00") == std::vector<std::string>{late});
  CHECK(key_ids_since(db, "2026-01-01T09:00:00-02:00") == std::vector<std::string>{late});
  CHECK(key_ids_since(db, "2026-01-01T14:00:00+02:00") == std::vector<std::string>{late});
  CHECK(key_ids_since(db, "2026-01-01T14:00:00.001+02:00").empty());
}

TEST_CASE("cli: audit --since rounds a fraction finer than the millisecond up", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string key_id = create_key(db).at("key_id").get<std::string>();
  {
    SQLite::Database raw(db, SQLite::OPEN_READWRITE);
    raw.exec("UPDATE audit_events SET time_ms = 1767268800123");  // 2026-01-01T12:00:00.123Z
  }
  const std::vector<Json> all = audit_events(db);
  REQUIRE(all.size() == 1);
  REQUIRE(all[0].at("time") == "2026-01-01T12:00:00.123Z");
  const std::vector<std::string> kept{key_id};
  CHECK(key_ids_since(db, "2026-01-01T12:00:00.123Z") == kept);
  CHECK(key_ids_since(db, "2026-01-01T12:00:00.123000000Z") == kept);
  CHECK(key_ids_since(db, "2026-01-01T12:00:00.1229Z") == kept);
  // The event's time + 0.0001 s, + 1 ns, and the same with an offset: after the event.
  CHECK(key_ids_since(db, "2026-01-01T12:00:00.1231Z").empty());
  CHECK(key_ids_since(db, "2026-01-01T12:00:00.123000001Z").empty());
  CHECK(key_ids_since(db, "2026-01-01T14:00:00.1231+02:00").empty());
}

TEST_CASE("cli: audit shows an action or actor type it does not know as unknown:N", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  create_key(db);
  {
    // As a newer library would write them.
    SQLite::Database raw(db, SQLite::OPEN_READWRITE);
    raw.exec("UPDATE audit_events SET action = 200, actor_type = 9");
  }
  const std::vector<Json> events = audit_events(db);
  REQUIRE(events.size() == 1);
  CHECK(events[0].at("action") == "unknown:200");
  CHECK(events[0].at("actor").at("type") == "unknown:9");
}

TEST_CASE("cli: audit pages with --cursor, filters by --key-id and --since", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string a = create_key(db).at("key_id").get<std::string>();
  const std::string b = create_key(db).at("key_id").get<std::string>();
  run_json(plus(key_args(db, "update", a), {"--title", "renamed"}));
  run_json(plus(key_args(db, "revoke", b), {"--reason", "leaked"}));
  run_json(key_args(db, "delete", a));
  create_key(db, kOtherAccount);
  run_json({"--db", db, "revoke-all", "--account", kAccount});  // nothing left: no event

  // Page by page, two at a time: every event once, newest first.
  std::vector<std::string> seen;
  std::string cursor;
  int pages = 0;
  for (;;) {
    std::vector<std::string> args{"--db", db, "audit", "--account", kAccount, "--limit", "2"};
    if (!cursor.empty()) args.insert(args.end(), {"--cursor", cursor});
    const Json page = run_json(args);
    CHECK(page.at("events").size() <= 2);
    for (const Json& e : page.at("events")) seen.push_back(e.at("event_id").get<std::string>());
    ++pages;
    REQUIRE(pages <= 5);
    if (page.at("next_cursor").is_null()) break;
    cursor = page.at("next_cursor").get<std::string>();
  }
  const std::vector<Json> all = audit_events(db);
  REQUIRE(all.size() == 5);
  CHECK(pages == 3);
  std::vector<std::string> ids;
  for (const Json& e : all) ids.push_back(e.at("event_id").get<std::string>());
  CHECK(seen == ids);
  std::vector<std::string> actions;
  for (const Json& e : all) actions.push_back(e.at("action").get<std::string>());
  CHECK(actions == std::vector<std::string>{"remove", "revoke", "update", "create", "create"});
  CHECK(all[0].at("after") == Json::object());
  CHECK(all[0].at("before").at("title") == "renamed");
  CHECK(all[1].at("reason") == "leaked");
  CHECK(all[2].at("before").at("title") == "CI key");
  CHECK(all[2].at("after").at("title") == "renamed");
  for (std::size_t i = 1; i < all.size(); ++i)
    CHECK(all[i - 1].at("time").get<std::string>() >= all[i].at("time").get<std::string>());

  // One key's events.
  const std::vector<Json> of_a = audit_events(db, {"--key-id", a});
  REQUIRE(of_a.size() == 3);
  for (const Json& e : of_a) CHECK(e.at("key_id") == a);
  // --since: the oldest event's time keeps it; a time after the newest keeps none.
  CHECK(audit_events(db, {"--since", all.back().at("time").get<std::string>()}).size() == 5);
  CHECK(audit_events(db, {"--since", "9999-12-31T23:59:59Z"}).empty());
  CHECK(audit_events(db, {"--since", "2000-01-01T02:00:00+02:00"}).size() == 5);

  // Refused: a bad limit, time or key id, or a cursor made for another filter.
  const Json first = run_json({"--db", db, "audit", "--account", kAccount, "--limit", "1"});
  const std::string first_cursor = first.at("next_cursor").get<std::string>();
  for (const std::vector<std::string>& extra : std::vector<std::vector<std::string>>{
           {"--limit", "0"},
           {"--limit", "1001"},
           {"--since", "yesterday"},
           {"--since", "2026-02-30T00:00:00Z"},
           {"--since", "2026-01-01T00:00:00"},
           {"--key-id", "not-a-uuid"},
           {"--cursor", "zz"},
           {"--cursor", first_cursor, "--key-id", a},
       }) {
    INFO(extra[0] << " " << extra[1]);
    const Run r = run_cli(plus({"--db", db, "audit", "--account", kAccount}, extra));
    CHECK(r.code == 2);
    CHECK(r.out.empty());
  }
  CHECK(run_cli({"--db", db, "audit"}).code == 2);  // --account is required
}

TEST_CASE("cli: audit-prune deletes the events before --before and prints how many", "[cli]") {
  TempDir dir;
  const std::string db = dir.file("keys.db");
  const std::string key_id = create_key(db).at("key_id").get<std::string>();
  run_json(key_args(db, "disable", key_id));
  create_key(db, kOtherAccount);

  Json out = run_json({"--db", db, "audit-prune", "--before", "2000-01-01T00:00:00Z"});
  CHECK(out == Json{{"deleted", 0}});
  CHECK(audit_events(db).size() == 2);
  // Every account's events before the time go.
  out = run_json({"--db", db, "audit-prune", "--before", "9999-01-01T00:00:00.000Z"});
  CHECK(out == Json{{"deleted", 3}});
  CHECK(audit_events(db).empty());
  CHECK(run_json({"--db", db, "audit", "--account", kOtherAccount}).at("events").empty());
  // The keys themselves stay.
  CHECK(run_json(key_args(db, "get", key_id)).at("status") == "disabled");

  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--db", db, "audit-prune"},
           {"--db", db, "audit-prune", "--before", "last week"},
           {"--db", db, "audit-prune", "--before", "2026-01-01T24:00:00Z"},
           {"--db", dir.file("missing.db"), "audit-prune", "--before", "2026-01-01T00:00:00Z"},
       }) {
    const Run r = run_cli(args);
    CHECK(r.code != 0);
    CHECK(r.out.empty());
  }
  CHECK_FALSE(fs::exists(dir.file("missing.db")));
}

#endif  // APIKEYS_CLI_PATH
