// Secrets in messages: drive every failure path we can reach — bad
// requests carrying a secret, bad peppers, storage faults, bad CLI usage with secrets in
// every argument position — capture each exception message and all CLI output, and
// grep it for the secret, the pepper (raw and hex) and the stored digest. None may
// appear; the only output allowed to hold a secret is a successful `create`'s stdout.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "reliability_support.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using namespace apikeys;
using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Everything that must never show up, and the part of it worth looking for: whole
// values and 16-character slices (a truncated echo is still a leak).
class Forbidden {
 public:
  void add(const std::string& label, const std::string& value) {
    needles_.emplace_back(label, value);
    if (value.size() > 24) {
      needles_.emplace_back(label + " (start)", value.substr(0, 16));
      needles_.emplace_back(label + " (end)", value.substr(value.size() - 16));
    }
  }
  // Returns what leaked into `text` (empty: nothing). Hex is compared case-insensitively.
  std::vector<std::string> leaks(const std::string& text) const {
    std::vector<std::string> found;
    const std::string low = lower(text);
    for (const auto& [label, needle] : needles_) {
      if (text.find(needle) != std::string::npos || low.find(lower(needle)) != std::string::npos) {
        found.push_back(label);
      }
    }
    return found;
  }

 private:
  std::vector<std::pair<std::string, std::string>> needles_;
};

struct Captured {
  std::string where;
  std::string text;
};

// Runs `f`, expecting it to throw; records what() (whatever the type).
template <typename F>
void capture(std::vector<Captured>& out, const std::string& where, F&& f) {
  try {
    f();
    out.push_back({where, "(did not throw)"});
  } catch (const std::exception& e) {
    out.push_back({where, e.what()});
  } catch (...) {
    out.push_back({where, "(non-std exception)"});
  }
}

void check_no_leaks(const Forbidden& forbidden, const std::vector<Captured>& captured) {
  std::size_t leaks = 0;
  for (const Captured& c : captured) {
    for (const auto& what : forbidden.leaks(c.text)) {
      ++leaks;
      std::cerr << "secrets: " << what << " leaked in " << c.where << ": " << c.text << "\n";
    }
  }
  std::cout << "secrets: " << captured.size() << " messages/outputs checked\n";
  CHECK(leaks == 0);
}

}  // namespace

TEST_CASE("secrets: no exception message holds a secret, the pepper or a digest", "[secrets]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("secrets.db");
  const std::string pepper(apikeys_test::kTestPepper);
  auto hasher = std::make_shared<HmacSha256Hasher>(pepper);
  auto store = std::make_shared<SqliteStore>(db);
  KeyManager m(store, hasher);
  const Uuid account = apikeys_test::account_id(1);
  const CreatedKey key = m.create(account, CreateRequest{"victim", "", std::nullopt});
  const std::string sk(key.secret_key.reveal());
  const std::string pk = key.info.public_key;
  const Digest digest = hasher->hash(sk);

  Forbidden forbidden;
  forbidden.add("secret", sk);
  forbidden.add("secret body", sk.substr(3));
  forbidden.add("pepper", pepper);
  forbidden.add("pepper hex", apikeys_test::to_hex(pepper));
  forbidden.add("digest hex", apikeys_test::to_hex(digest.bytes));
  forbidden.add("digest bytes", std::string(digest.bytes.begin(), digest.bytes.end()));

  std::vector<Captured> msgs;
  // Requests that carry the secret where it does not belong.
  capture(msgs, "title = secret + control", [&] {
    (void)m.create(account, CreateRequest{sk + "\x01", "", std::nullopt});
  });
  capture(msgs, "title = secret + bad UTF-8", [&] {
    (void)m.create(account, CreateRequest{sk + "\xFF", "", std::nullopt});
  });
  capture(msgs, "title = secret x 10", [&] {
    (void)m.create(account, CreateRequest{sk + sk + sk + sk + sk + sk + sk + sk, "", std::nullopt});
  });
  capture(msgs, "description = secret + ESC", [&] {
    (void)m.create(account, CreateRequest{"t", sk + "\x1b", std::nullopt});
  });
  capture(msgs, "expiry refused with secret title", [&] {
    (void)m.create(account, CreateRequest{sk, sk, 0});
  });
  capture(msgs, "normalize_request", [&] {
    (void)normalize_request(CreateRequest{"\t" + sk + "\0"s, "", std::nullopt});
  });
  capture(msgs, "revoke unknown", [&] { m.revoke(account, Uuid::random()); });
  capture(msgs, "remove other account",
          [&] { m.remove(apikeys_test::account_id(2), key.info.key_id); });
  // Peppers that break the rules.
  capture(msgs, "short pepper", [&] { HmacSha256Hasher h(pepper.substr(0, 31)); });
  capture(msgs, "duplicate pepper ids", [&] { HmacSha256Hasher h({{1, pepper}, {1, pepper}}, 1); });
  capture(msgs, "unknown current pepper", [&] { HmacSha256Hasher h({{1, pepper}}, 7); });
  capture(msgs, "no peppers", [&] { HmacSha256Hasher h({}, 1); });
  capture(msgs, "short pepper among good", [&] {
    HmacSha256Hasher h({{1, pepper}, {2, sk.substr(0, 20)}}, 1);
  });
  // Key formats built from a secret.
  capture(msgs, "format prefix = secret", [&] {
    KeyFormat f;
    f.public_prefix = sk;
    f.check();
  });
  capture(msgs, "format prefix = secret body", [&] {
    KeyFormat f;
    f.secret_prefix = sk.substr(3, 20) + "-";
    f.check();
  });
  // Storage failures on the path of a key that holds the secret.
  capture(msgs, "duplicate insert", [&] {
    KeyRecord r;
    r.info.key_id = Uuid::random();
    r.info.account_id = account;
    r.info.public_key = pk;
    r.info.title = sk;
    r.digest = digest;
    store->insert(r);
  });
  {
    SqliteStoreOptions so;
    so.busy_timeout = std::chrono::milliseconds(50);
    auto busy_store = std::make_shared<SqliteStore>(db, so);
    KeyManager busy(busy_store, hasher);
    apikeys_test::RawDb locker(db);
    locker.exec("BEGIN IMMEDIATE");
    locker.exec("UPDATE apikeys_meta SET revision = revision WHERE id = 1");
    capture(msgs, "create while locked", [&] {
      (void)busy.create(account, CreateRequest{sk, sk, std::nullopt});
    });
    capture(msgs, "revoke while locked", [&] { busy.revoke(account, key.info.key_id); });
    locker.exec("ROLLBACK");
  }
  {
    SqliteStoreOptions ro;
    ro.read_only = true;
    KeyManager read_only(std::make_shared<SqliteStore>(db, ro), hasher);
    capture(msgs, "create read-only", [&] {
      (void)read_only.create(account, CreateRequest{sk, sk, std::nullopt});
    });
  }
  // A user's store that fails: the KeyManager wraps its message.
  {
    auto failing = std::make_shared<apikeys_test::InstrumentedStore>();
    KeyManager fm(failing, hasher);
    failing->fail_finds = true;
    CHECK(fm.validate(pk, sk).code == ValidationCode::error);  // and no message at all
  }
  // Files that are not apikeys databases.
  {
    const std::string text = dir.file("not-a-db.txt");
    std::ofstream(text) << "this is not a database, it mentions nothing secret\n";
    capture(msgs, "open a text file", [&] { SqliteStore s(text); });
    capture(msgs, "open a directory", [&] { SqliteStore s(dir.path().string()); });
  }
  check_no_leaks(forbidden, msgs);
}

#ifdef APIKEYS_CLI_PATH
namespace {

const std::string kPepperHex = "00112233445566778899aabbccddeeff0123456789abcdef0123456789abcdef";

apikeys_test::ProgramRun cli(const std::vector<std::string>& args,
                             const std::string& pepper_hex = kPepperHex,
                             const std::string& input = "") {
  std::vector<std::string> argv{APIKEYS_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> env;
  if (!pepper_hex.empty()) env.push_back("APIKEYS_PEPPER=" + pepper_hex);
  return apikeys_test::run_program(argv, env, input);
}

// The value of "field": "..." in the CLI's JSON output.
std::string json_field(const std::string& json, const std::string& field) {
  const std::string key = "\"" + field + "\": \"";
  const auto at = json.find(key);
  if (at == std::string::npos) return {};
  const auto start = at + key.size();
  return json.substr(start, json.find('"', start) - start);
}

}  // namespace

TEST_CASE("secrets: CLI failure output never holds a secret or the pepper", "[secrets]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("cli.db");
  const std::string account = apikeys_test::account_id(1).to_string();
  const auto created = cli({"--db", db, "create", "--account", account, "--title", "victim"});
  REQUIRE(created.code == 0);
  const std::string sk = json_field(created.out, "secret_key");
  const std::string pk = json_field(created.out, "public_key");
  const std::string key_id = json_field(created.out, "key_id");
  REQUIRE(sk.size() == 35);
  REQUIRE(pk.size() == 35);
  std::string wrong = sk;
  wrong.back() = wrong.back() == 'z' ? 'y' : 'z';

  Forbidden forbidden;
  forbidden.add("secret", sk);
  forbidden.add("secret body", sk.substr(3));
  forbidden.add("wrong secret", wrong);
  forbidden.add("pepper hex", kPepperHex);
  const auto raw = apikeys_test::from_hex(kPepperHex);
  forbidden.add("pepper bytes", std::string(raw.begin(), raw.end()));

  std::vector<Captured> outs;
  auto run = [&](const std::string& where, const std::vector<std::string>& args,
                 const std::string& pepper = kPepperHex, const std::string& input = "",
                 int expect_code = -1) {
    const auto r = cli(args, pepper, input);
    outs.push_back({where + " (exit " + std::to_string(r.code) + ")", r.out + "\n" + r.err});
    if (expect_code >= 0) CHECK(r.code == expect_code);
    if (r.code == 0 && expect_code < 0)
      std::cerr << "secrets: unexpected success: " << where << "\n";
    return r;
  };

  run("verify wrong secret", {"--db", db, "verify", pk, wrong}, kPepperHex, "", 1);
  run("verify wrong token", {"--db", db, "verify", pk + ":" + wrong}, kPepperHex, "", 1);
  run("verify secret as key", {"--db", db, "verify", sk}, kPepperHex, "", 1);
  run("verify secret twice", {"--db", db, "verify", sk, sk}, kPepperHex, "", 1);
  run("verify swapped", {"--db", db, "verify", sk + ":" + pk}, kPepperHex, "", 1);
  run("verify extra args", {"--db", db, "verify", pk, sk, sk}, kPepperHex, "", 2);
  run("verify extra token args", {"--db", db, "verify", pk + ":" + sk, wrong, sk}, kPepperHex, "",
      2);
  run("verify unknown option", {"--db", db, "verify", "--secret=" + sk, pk}, kPepperHex, "", 2);
  run("verify unknown option 2", {"--db", db, "verify", "--secret", sk, pk}, kPepperHex, "", 2);
  run("verify stdin malformed", {"--db", db, "verify", "-"}, kPepperHex, sk + "\n", 1);
  run("verify stdin wrong", {"--db", db, "verify", "-"}, kPepperHex, pk + ":" + wrong + "\n", 1);
  run("verify missing db", {"--db", dir.file("missing.db"), "verify", pk, sk}, kPepperHex, "", 4);
  run("list with secret as account", {"--db", db, "list", "--account", sk}, kPepperHex, "", 2);
  run("revoke with secret as key id", {"--db", db, "revoke", "--account", account, "--key-id", sk},
      kPepperHex, "", 2);
  run("delete with secret as account", {"--db", db, "delete", "--account", sk, "--key-id", key_id},
      kPepperHex, "", 2);
  run("create title secret + control",
      {"--db", db, "create", "--account", account, "--title", sk + "\x01"}, kPepperHex, "", 2);
  run("create description secret + ESC",
      {"--db", db, "create", "--account", account, "--title", "t", "--description", sk + "\x1b"},
      kPepperHex, "", 2);
  run("create expiry = secret",
      {"--db", db, "create", "--account", account, "--title", "t", "--expires-in-days", sk},
      kPepperHex, "", 2);
  run("update title = secret",
      {"--db", db, "update", "--account", account, "--key-id", key_id, "--title", sk}, kPepperHex,
      "", 2);
  run("update metadata holds secret",
      {"--db", db, "update", "--account", account, "--key-id", key_id, "--metadata",
       "{\"k\":\"" + sk + "\"}"},
      kPepperHex, "", 2);
  run("update expected version = secret",
      {"--db", db, "update", "--account", account, "--key-id", key_id, "--title", "t",
       "--expected-version", sk},
      kPepperHex, "", 2);
  run("create scope = secret",
      {"--db", db, "create", "--account", account, "--title", "t", "--scope", sk}, kPepperHex, "",
      2);
  run("verify required scope = secret", {"--db", db, "verify", pk, sk, "--scope", sk}, kPepperHex,
      "", 2);
  run("rotate grace = secret",
      {"--db", db, "rotate", "--account", account, "--key-id", key_id, "--grace-seconds", sk},
      kPepperHex, "", 2);
  run("list cursor = secret", {"--db", db, "list", "--account", account, "--cursor", sk},
      kPepperHex, "", 2);
  run("list status = secret", {"--db", db, "list", "--account", account, "--status", sk},
      kPepperHex, "", 2);
  run("secret as command", {"--db", db, sk}, kPepperHex, "", 2);
  run("secret as db flag value of unknown option",
      {"--db", db, "--token=" + sk, "list", "--account", account}, kPepperHex, "", 2);
  // Peppers that are wrong in every way: never echoed.
  run("pepper with a bad digit", {"--db", db, "list", "--account", account},
      kPepperHex.substr(0, 63) + "g", "", 2);
  run("pepper too short", {"--db", db, "list", "--account", account}, kPepperHex.substr(0, 62), "",
      2);
  run("pepper odd length", {"--db", db, "list", "--account", account}, kPepperHex + "a", "", 2);
  {
    const std::string pf = dir.file("pepper.txt");
    std::ofstream(pf) << kPepperHex << "zz\n";
    run("pepper file with a bad digit",
        {"--db", db, "--pepper-file", pf, "list", "--account", account}, "", "", 2);
  }
  // The right pepper, but the store fails.
  {
    const std::string text = dir.file("text.db");
    std::ofstream(text) << "not a database\n";
    run("verify on a non-database", {"--db", text, "verify", pk, sk}, kPepperHex, "", 4);
    run("create on a non-database", {"--db", text, "create", "--account", account, "--title", "t"},
        kPepperHex, "", 4);
    run("verify on a directory", {"--db", dir.path().string(), "verify", pk + ":" + sk}, kPepperHex,
        "", 4);
  }
  // A different (valid) pepper: the key is now wrong, and neither pepper is echoed.
  run("verify under another pepper", {"--db", db, "verify", pk, sk},
      "ffeeddccbbaa99887766554433221100fedcba9876543210fedcba9876543210", "", 1);
  // Revoked and deleted keys presented with their secret.
  REQUIRE(cli({"--db", db, "revoke", "--account", account, "--key-id", key_id}).code == 0);
  run("verify revoked", {"--db", db, "verify", pk, sk}, kPepperHex, "", 1);
  REQUIRE(cli({"--db", db, "delete", "--account", account, "--key-id", key_id}).code == 0);
  run("verify deleted", {"--db", db, "verify", pk + ":" + sk}, kPepperHex, "", 1);
  // The one place a secret may appear: create's stdout. Its stderr stays clean.
  const auto second = cli({"--db", db, "create", "--account", account, "--title", "second"});
  CHECK(second.code == 0);
  outs.push_back({"create stderr", second.err});
  check_no_leaks(forbidden, outs);
}

TEST_CASE("secrets: no CLI option, argument or variable shows the secret or pepper given to it",
          "[secrets]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("cli.db");
  const std::string account = apikeys_test::account_id(1).to_string();
  const std::string no_such_key =
      apikeys_test::account_id(99).to_string();  // revoke/delete touch nothing
  const auto created = cli({"--db", db, "create", "--account", account, "--title", "victim"});
  REQUIRE(created.code == 0);
  const std::string sk = json_field(created.out, "secret_key");
  const std::string pk = json_field(created.out, "public_key");
  REQUIRE(sk.size() == 35);

  Forbidden forbidden;
  forbidden.add("secret", sk);
  forbidden.add("secret body", sk.substr(3));
  forbidden.add("pepper hex", kPepperHex);

  using Args = std::vector<std::string>;
  auto with = [](Args head, const Args& tail) {
    head.insert(head.end(), tail.begin(), tail.end());
    return head;
  };
  std::vector<Captured> outs;
  for (const auto& [label, value] :
       {std::pair<std::string, std::string>{"a secret", sk}, {"the pepper", kPepperHex}}) {
    auto run = [&, label = label](const std::string& where, const Args& args,
                                  const std::string& pepper = kPepperHex,
                                  const std::string& input = "") {
      const auto r = cli(args, pepper, input);
      outs.push_back(
          {where + " = " + label + " (exit " + std::to_string(r.code) + ")", r.out + "\n" + r.err});
    };
    const std::string& v = value;
    // A path made of the value: `create` would make that file, so it goes in our dir.
    const std::string v_path = dir.file(v);
    const std::vector<std::pair<std::string, Args>> commands{
        {"create", {"create", "--account", account, "--title", "t"}},
        {"list", {"list", "--account", account}},
        {"revoke", {"revoke", "--account", account, "--key-id", no_such_key}},
        {"delete", {"delete", "--account", account, "--key-id", no_such_key}},
        {"verify", {"verify", pk, sk}},
    };
    for (const auto& [name, command] : commands) {
      if (name != "create") {
        run(name + " --db", with({"--db", v}, command));
        run(name + " --db=", with({"--db=" + v}, command));
      }
      run(name + " --db (a path)", with({"--db", v_path}, command));
      run(name + " --db after the command", with(command, {"--db", v_path}));
      run(name + " --pepper-file", with({"--db", db, "--pepper-file", v}, command), "");
      run(name + " --pepper-file=", with({"--db", db, "--pepper-file=" + v}, command), "");
      run(name + " --pepper-file (a path)", with({"--db", db, "--pepper-file", v_path}, command),
          "");
      run(name + " APIKEYS_PEPPER", with({"--db", db}, command), v);
      run(name + " unknown option", with({"--db", db, "--token=" + v}, command));
      run(name + " extra argument", with(with({"--db", db}, command), {v}));
    }
    const Args create{"--db", db, "create"};
    run("create --account", with(create, {"--account", v, "--title", "t"}));
    run("create --title", with(create, {"--account", account, "--title", v}));
    run("create --title=", with(create, {"--account", account, "--title=" + v}));
    run("create --title (inside)",
        with(create, {"--account", account, "--title", "key " + v + " here"}));
    run("create --description",
        with(create, {"--account", account, "--title", "t", "--description", v}));
    run("create --expires-in-days",
        with(create, {"--account", account, "--title", "t", "--expires-in-days", v}));
    run("list --account", {"--db", db, "list", "--account", v});
    run("revoke --account", {"--db", db, "revoke", "--account", v, "--key-id", no_such_key});
    run("revoke --key-id", {"--db", db, "revoke", "--account", account, "--key-id", v});
    run("delete --account", {"--db", db, "delete", "--account", v, "--key-id", no_such_key});
    run("delete --key-id", {"--db", db, "delete", "--account", account, "--key-id", v});
    run("verify KEY", {"--db", db, "verify", v});
    run("verify KEY PUBLIC", {"--db", db, "verify", v, pk});
    run("verify PUBLIC SECRET", {"--db", db, "verify", pk, v});
    run("verify PUBLIC:SECRET", {"--db", db, "verify", pk + ":" + v});
    run("verify SECRET:PUBLIC", {"--db", db, "verify", v + ":" + pk});
    run("verify - (stdin)", {"--db", db, "verify", "-"}, kPepperHex, v + "\n");
    run("verify - (stdin token)", {"--db", db, "verify", "-"}, kPepperHex, pk + ":" + v + "\n");
    run("command", {"--db", db, v});
    run("command with options", {"--db", db, v, "--account", account});
    run("long option named after it", {"--db", db, "--" + v, "list", "--account", account});
  }
  check_no_leaks(forbidden, outs);
}
#endif
