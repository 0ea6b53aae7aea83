// The apikeys CLI against real PostgreSQL and Redis: every change it makes (update,
// disable, enable, rotate, revoke) reaches a validating node at once. The node is this
// test process: its own Validator over its own PostgresStore, with a two-tier
// RedisCache and no revision poll, so the only way it can hear of a change is the
// CLI's erase in the shared cache (--redis). Before each change the node answers from
// its cache (its store is not read), so a node that missed the erase would keep
// answering from the old state. Then a Redis that cannot be reached: changes are saved
// and printed, and exit 4.
#include "catch.hpp"
#include "server_support.hpp"

#ifdef APIKEYS_CLI_PATH

#include <libpq-fe.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "apikeys/hasher.hpp"
#include "apikeys/postgres_store.hpp"
#include "apikeys/redis_cache.hpp"
#include "apikeys/validator.hpp"
#include "process_support.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

#include "../../src/hex.hpp"

namespace {

using Json = nlohmann::json;
using std::chrono::milliseconds;

// The test server's libpq key=value conninfo as a postgresql:// URL (what the CLI
// takes). The values scripts/servers.sh writes need no quoting or escaping.
std::string conninfo_to_url(const std::string& conninfo) {
  std::istringstream in(conninfo);
  std::string host = "127.0.0.1", port = "5432", user, password, dbname, query;
  for (std::string word; in >> word;) {
    const auto eq = word.find('=');
    if (eq == std::string::npos) continue;
    const std::string k = word.substr(0, eq);
    const std::string v = word.substr(eq + 1);
    if (k == "host") {
      host = v;
    } else if (k == "port") {
      port = v;
    } else if (k == "user") {
      user = v;
    } else if (k == "password") {
      password = v;
    } else if (k == "dbname") {
      dbname = v;
    } else {
      query += (query.empty() ? "?" : "&") + k + "=" + v;
    }
  }
  std::string url = "postgresql://";
  if (!user.empty()) url += user + (password.empty() ? "" : ":" + password) + "@";
  return url + host + ":" + port + "/" + dbname + query;
}

void drop_schema(const std::string& pg, const std::string& schema) {
  PGconn* c = PQconnectdb(pg.c_str());
  if (PQstatus(c) == CONNECTION_OK) {
    PQsetNoticeProcessor(
        c, [](void*, const char*) {}, nullptr);
    PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS \"" + schema + "\" CASCADE").c_str()));
  }
  PQfinish(c);
}

}  // namespace

TEST_CASE("CLI changes through PostgreSQL reach a Redis-cached node at once", "[servers][cli]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string schema = apikeys_test::unique_name("apikeys_cli");
  const std::string prefix = "apikeys-test:" + apikeys_test::unique_name("cli") + ":";
  const std::string redis_address = redis->host + ":" + std::to_string(redis->port);
  const std::string url = conninfo_to_url(*pg);
  const std::string account = apikeys_test::account_id(11).to_string();

  std::string pepper_hex(2 * apikeys_test::kTestPepper.size(), '\0');
  apikeys::detail::hex_encode(apikeys_test::kTestPepper.data(), apikeys_test::kTestPepper.size(),
                              pepper_hex.data());

  // Runs the CLI on the test database and shared cache; REQUIREs success.
  std::vector<apikeys_test::ProgramRun> runs;
  const auto cli = [&](const std::vector<std::string>& args) {
    std::vector<std::string> argv{APIKEYS_CLI_PATH, "--db",           url,
                                  "--pg-schema",    schema,           "--redis",
                                  redis_address,    "--redis-prefix", prefix};
    argv.insert(argv.end(), args.begin(), args.end());
    const apikeys_test::ProgramRun r =
        apikeys_test::run_program(argv, {"APIKEYS_PEPPER=" + pepper_hex});
    runs.push_back(r);
    INFO("apikeys " << args.at(0) << "\nstdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.code == 0);
    return Json::parse(r.out);
  };

  {
    // The node.
    apikeys::PostgresStoreOptions so;
    so.schema = schema;
    auto store = std::make_shared<apikeys_test::CountingStore>(
        std::make_shared<apikeys::PostgresStore>(*pg, so));
    apikeys::RedisCacheOptions co;
    co.host = redis->host;
    co.port = redis->port;
    co.prefix = prefix;
    auto cache = std::make_shared<apikeys::RedisCache>(co);
    apikeys::ValidatorOptions vo;
    vo.cache = cache;
    vo.revision_poll_interval = milliseconds(0);  // only the shared cache can tell it
    vo.record_last_use = false;
    const apikeys::Validator node(store, apikeys_test::hasher(), vo);
    REQUIRE(apikeys_test::eventually([&] { return cache->local_tier_live(); }));

    const Json created = cli({"create", "--account", account, "--title", "through the CLI",
                              "--scope", "a.read", "--scope", "b.read"});
    std::string token = created.at("public_key").get<std::string>() + ":" +
                        created.at("secret_key").get<std::string>();
    const std::string key_id = created.at("key_id").get<std::string>();
    apikeys::Requirements both;
    both.scopes = {"a.read", "b.read"};
    apikeys::Requirements a_only;
    a_only.scopes = {"a.read"};

    // Validates until the node answers from its cache (no store read), and REQUIREs
    // that answer to be `code`.
    const auto warm = [&](const apikeys::Requirements& req, apikeys::ValidationCode code) {
      for (int i = 0; i < 3; ++i) REQUIRE(node.validate(token, req).code == code);
      const int finds = store->finds.load();
      REQUIRE(node.validate(token, req).code == code);
      REQUIRE(store->finds.load() == finds);
    };
    // After a CLI change: the node must answer `code` within 1 s (it has no other way
    // to learn of it than the shared cache; the verdict it held lives 120 s or more).
    const auto expect_soon = [&](const char* what, const apikeys::Requirements& req,
                                 apikeys::ValidationCode code) {
      const auto t0 = std::chrono::steady_clock::now();
      apikeys::ValidationCode got = node.validate(token, req).code;
      while (got != code && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3)) {
        std::this_thread::sleep_for(milliseconds(5));
        got = node.validate(token, req).code;
      }
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::cout << "cli " << what << ": the node answered " << apikeys::to_string(got) << " after "
                << ms << " ms" << std::endl;
      INFO(what);
      CHECK(apikeys::to_string(got) == std::string(apikeys::to_string(code)));
      CHECK(ms < 1000.0);
    };

    warm(both, apikeys::ValidationCode::valid);
    Json k = cli({"update", "--account", account, "--key-id", key_id, "--scope", "a.read"});
    CHECK(k.at("scopes") == Json::array({"a.read"}));
    expect_soon("update (scope b.read removed)", both, apikeys::ValidationCode::insufficient_scope);
    CHECK(node.validate(token, both).missing_scopes == std::vector<std::string>{"b.read"});

    warm(a_only, apikeys::ValidationCode::valid);
    k = cli({"disable", "--account", account, "--key-id", key_id});
    CHECK(k.at("status") == "disabled");
    expect_soon("disable", a_only, apikeys::ValidationCode::disabled);

    warm(a_only, apikeys::ValidationCode::disabled);
    k = cli({"enable", "--account", account, "--key-id", key_id});
    CHECK(k.at("status") == "active");
    expect_soon("enable", a_only, apikeys::ValidationCode::valid);

    warm(a_only, apikeys::ValidationCode::valid);
    const Json rotated =
        cli({"rotate", "--account", account, "--key-id", key_id, "--grace-seconds", "0"});
    CHECK(rotated.at("old").at("rotated_to") == rotated.at("new").at("key_id"));
    expect_soon("rotate (grace 0), the old key", a_only, apikeys::ValidationCode::expired);

    token = rotated.at("new").at("public_key").get<std::string>() + ":" +
            rotated.at("new").at("secret_key").get<std::string>();
    const std::string new_id = rotated.at("new").at("key_id").get<std::string>();
    warm(a_only, apikeys::ValidationCode::valid);  // the successor kept the scopes
    k = cli({"revoke", "--account", account, "--key-id", new_id});
    CHECK(k.at("status") == "revoked");
    expect_soon("revoke", a_only, apikeys::ValidationCode::revoked);

    // The URL's password (if any) never shows, nor the pepper.
    for (const auto& r : runs) CHECK(r.err.find(pepper_hex) == std::string::npos);
  }
  drop_schema(*pg, schema);
}

// README, "Changes and a shared cache": a change whose shared cache cannot be reached is
// still saved and printed (a rotation's new secret included), then reported: exit 4.
// Reads never touch the cache and succeed.
TEST_CASE("CLI: a change with Redis unreachable is saved and printed, then exits 4",
          "[servers][cli]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  const std::string schema = apikeys_test::unique_name("apikeys_cli");
  const std::string url = conninfo_to_url(*pg);
  const std::string account = apikeys_test::account_id(12).to_string();
  std::string pepper_hex(2 * apikeys_test::kTestPepper.size(), '\0');
  apikeys::detail::hex_encode(apikeys_test::kTestPepper.data(), apikeys_test::kTestPepper.size(),
                              pepper_hex.data());
  const auto cli = [&](const std::vector<std::string>& args, bool with_redis) {
    std::vector<std::string> argv{APIKEYS_CLI_PATH, "--db", url, "--pg-schema", schema};
    if (with_redis) argv.insert(argv.end(), {"--redis", "127.0.0.1:1"});  // nothing listens
    argv.insert(argv.end(), args.begin(), args.end());
    return apikeys_test::run_program(argv, {"APIKEYS_PEPPER=" + pepper_hex});
  };
  {
    const apikeys_test::ProgramRun created =
        cli({"create", "--account", account, "--title", "t"}, false);
    REQUIRE(created.code == 0);
    const std::string key_id = Json::parse(created.out).at("key_id").get<std::string>();
    const std::vector<std::string> key = {"--account", account, "--key-id", key_id};
    const auto with = [&key](std::vector<std::string> args) {
      args.insert(args.end(), key.begin(), key.end());
      return args;
    };

    const apikeys_test::ProgramRun listed = cli({"list", "--account", account}, true);
    CHECK(listed.code == 0);

    const apikeys_test::ProgramRun disabled = cli(with({"disable"}), true);
    INFO("stderr: " << disabled.err);
    CHECK(disabled.code == 4);
    CHECK(disabled.err.find("shared cache") != std::string::npos);
    CHECK(Json::parse(disabled.out).at("status") == "disabled");
    const apikeys_test::ProgramRun got = cli(with({"get"}), false);
    REQUIRE(got.code == 0);
    CHECK(Json::parse(got.out).at("status") == "disabled");  // saved

    REQUIRE(cli(with({"enable"}), false).code == 0);
    const apikeys_test::ProgramRun rotated = cli(with({"rotate"}), true);
    CHECK(rotated.code == 4);
    const Json r = Json::parse(rotated.out);
    CHECK(r.at("new").at("secret_key").get<std::string>().rfind("sk_", 0) == 0);
    CHECK(r.at("old").at("rotated_to") == r.at("new").at("key_id"));
  }
  drop_schema(*pg, schema);
}

#else  // APIKEYS_CLI_PATH

// Built without the CLI (APIKEYS_BUILD_TOOLS=OFF): the CLI's server tests are not here,
// which a run that requires every server suite must not take for a pass.
TEST_CASE("CLI changes through PostgreSQL reach a Redis-cached node at once", "[servers][cli]") {
  if (apikeys_test::servers_required()) {
    FAIL("the CLI's server tests need the CLI: configure with -DAPIKEYS_BUILD_TOOLS=ON");
  }
  WARN("SKIPPED: built without the CLI (APIKEYS_BUILD_TOOLS=OFF)");
}

#endif  // APIKEYS_CLI_PATH
