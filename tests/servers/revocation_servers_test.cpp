// Cross-node revocation through PostgreSQL and Redis, with two processes: node A
// (apikeys_revoke_node) validates a key in a loop through its own two-tier RedisCache
// (answers from its in-process tier, no I/O); this process, node B, revokes the key;
// A must reject it within 1 second. The measured latency (revoke() called on B to the
// first rejection on A, both on CLOCK_MONOTONIC) is printed for each round. The same
// holds for every change that takes something away: a removed scope, a disabled key, an
// expiry shortened by rotation.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/postgres_store.hpp"
#include "apikeys/redis_cache.hpp"
#include "apikeys/store.hpp"
#include "catch.hpp"
#include "server_support.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

#ifndef APIKEYS_REVOKE_NODE_PATH
#error "APIKEYS_REVOKE_NODE_PATH must name the apikeys_revoke_node program"
#endif

using std::chrono::milliseconds;

namespace {

// A child process with a pipe to its stdin and one from its stdout, read line by line.
class Node {
 public:
  explicit Node(const std::vector<std::string>& args) {
    std::vector<std::string> store(args);
    std::vector<char*> argv;
    for (auto& a : store) argv.push_back(a.data());
    argv.push_back(nullptr);
    int in[2];
    int out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe2 failed");
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0) _exit(126);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    in_ = in[1];
    out_ = out[0];
  }
  ~Node() {
    if (in_ >= 0) close(in_);
    if (out_ >= 0) close(out_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  void send_line(const std::string& line) {
    const std::string data = line + "\n";
    if (write(in_, data.data(), data.size()) != static_cast<ssize_t>(data.size())) {
      throw std::runtime_error("write to node failed");
    }
    close(in_);
    in_ = -1;
  }

  // The next line, or "" on end of file or after `limit`.
  std::string read_line(milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    for (;;) {
      const auto nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      const auto left =
          std::chrono::duration_cast<milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return "";
      pollfd p{out_, POLLIN, 0};
      const int n = poll(&p, 1, static_cast<int>(left.count()));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return "";
      char buf[512];
      const ssize_t got = read(out_, buf, sizeof buf);
      if (got <= 0) return "";
      buffer_.append(buf, static_cast<std::size_t>(got));
    }
  }

 private:
  pid_t pid_ = -1;
  int in_ = -1;
  int out_ = -1;
  std::string buffer_;
};

// A TCP port that accepts connections (the kernel completes them) and never answers:
// to its client it is a Redis on the far side of a network partition.
class BlackHole {
 public:
  BlackHole() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        listen(fd_, 64) != 0 || getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      throw std::runtime_error("cannot open a listening socket");
    }
    port_ = ntohs(a.sin_port);
  }
  ~BlackHole() { close(fd_); }
  BlackHole(const BlackHole&) = delete;
  BlackHole& operator=(const BlackHole&) = delete;
  [[nodiscard]] int port() const noexcept { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

void drop_schema(const std::string& pg, const std::string& schema) {
  PGconn* c = PQconnectdb(pg.c_str());
  if (PQstatus(c) == CONNECTION_OK) {
    PQsetNoticeProcessor(
        c, [](void*, const char*) {}, nullptr);
    PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS \"" + schema + "\" CASCADE").c_str()));
  }
  PQfinish(c);
}

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

TEST_CASE("Two processes: a key revoked on node B is rejected by node A within 1 s",
          "[servers][revocation]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string schema = apikeys_test::unique_name("apikeys_x");
  const std::string prefix = "apikeys-test:" + apikeys_test::unique_name("x") + ":";
  const std::string redis_address = redis->host + ":" + std::to_string(redis->port);

  double worst_ms = 0;
  std::vector<double> latencies;
  {
    apikeys::PostgresStoreOptions so;
    so.schema = schema;
    auto store = std::make_shared<apikeys::PostgresStore>(*pg, so);
    apikeys::RedisCacheOptions co;
    co.host = redis->host;
    co.port = redis->port;
    co.prefix = prefix;
    auto cache = std::make_shared<apikeys::RedisCache>(co);
    apikeys::KeyManagerOptions mo;
    mo.validation.cache = cache;
    apikeys::KeyManager node_b(
        store, std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper), mo);
    const apikeys::Uuid account = apikeys_test::account_id(9);

    // Node A polls nothing (poll 0): the rejection can only come through Redis pub/sub.
    // The last round runs node A with the default revision poll (250 ms) as well.
    for (int round = 0; round < 6; ++round) {
      const bool default_poll = round == 5;
      const auto key = node_b.create(account, [] {
        apikeys::CreateRequest r;
        r.title = "cross-node";
        return r;
      }());
      Node a({APIKEYS_REVOKE_NODE_PATH, "--pg", *pg, "--schema", schema, "--redis", redis_address,
              "--prefix", prefix, "--poll-ms", default_poll ? "250" : "0", "--timeout-ms",
              "20000"});
      a.send_line(key.info.public_key + ":" + std::string(key.secret_key.reveal()));
      REQUIRE(a.read_line(milliseconds(15'000)) == "ready");
      std::this_thread::sleep_for(milliseconds(200));  // A is answering from its local tier

      const std::int64_t t0 = steady_ns();
      node_b.revoke(account, key.info.key_id);
      const std::int64_t revoked_at = steady_ns();
      const std::string line = a.read_line(milliseconds(5'000));
      INFO("node A said: '" << line << "'");
      std::istringstream in(line);
      std::string word, code;
      std::int64_t rejected_at = 0;
      in >> word >> code >> rejected_at;
      REQUIRE(word == "rejected");
      CHECK(code == "revoked");
      const double ms = static_cast<double>(rejected_at - t0) / 1e6;
      const double revoke_ms = static_cast<double>(revoked_at - t0) / 1e6;
      std::cout << "cross-process revoke latency: round " << round + 1
                << (default_poll ? " (node A also polling the revision)" : " (pub/sub only)")
                << ": " << ms
                << " ms from revoke() called on B to rejection on A (revoke() itself took "
                << revoke_ms << " ms)" << std::endl;
      latencies.push_back(ms);
      worst_ms = std::max(worst_ms, ms);
      CHECK(ms < 1000.0);
    }
  }
  std::sort(latencies.begin(), latencies.end());
  std::cout << "cross-process revoke latency: min " << latencies.front() << " ms, median "
            << latencies[latencies.size() / 2] << " ms, max " << latencies.back() << " ms over "
            << latencies.size() << " rounds" << std::endl;
  CHECK(worst_ms < 1000.0);
  drop_schema(*pg, schema);
}

TEST_CASE(
    "Two processes: a removed scope, a disabled key, a shortened expiry hold on node A at once",
    "[servers][revocation][policy]") {
  // Node A polls nothing: each change can reach it only through Redis. (A cache that
  // cannot keep a verdict's scopes answers A from the store every time: slower, and
  // just as right.)
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string schema = apikeys_test::unique_name("apikeys_q");
  const std::string prefix = "apikeys-test:" + apikeys_test::unique_name("q") + ":";
  const std::string redis_address = redis->host + ":" + std::to_string(redis->port);
  {
    apikeys::PostgresStoreOptions so;
    so.schema = schema;
    auto store = std::make_shared<apikeys::PostgresStore>(*pg, so);
    apikeys::RedisCacheOptions co;
    co.host = redis->host;
    co.port = redis->port;
    co.prefix = prefix;
    apikeys::KeyManagerOptions mo;
    mo.validation.cache = std::make_shared<apikeys::RedisCache>(co);
    mo.validation.record_last_use = false;
    apikeys::KeyManager node_b(
        store, std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper), mo);
    const apikeys::Uuid account = apikeys_test::account_id(10);

    struct Change {
      const char* what;
      const char* expected_code;
      std::function<void(const apikeys::CreatedKey&)> make;
    };
    const std::vector<Change> changes = {
        {"a removed scope", "insufficient_scope",
         [&](const apikeys::CreatedKey& key) {
           apikeys::KeyUpdate u;
           u.scopes = std::vector<std::string>{"invoices.read"};
           const auto now = node_b.update(account, key.info.key_id, u);
           CHECK(now.scopes == std::vector<std::string>{"invoices.read"});
         }},
        {"a disabled key", "disabled",
         [&](const apikeys::CreatedKey& key) { node_b.disable(account, key.info.key_id); }},
        {"an expiry shortened by rotation (grace 0)", "expired",
         [&](const apikeys::CreatedKey& key) {
           const auto successor = node_b.rotate(account, key.info.key_id, {});
           CHECK(node_b.validate(successor.info.public_key, successor.secret_key.reveal()).ok());
         }},
    };
    for (const auto& change : changes) {
      INFO(change.what);
      apikeys::CreateRequest request("cross-node policy");
      request.scopes = {"invoices.read", "invoices.write"};
      const auto key = node_b.create(account, request);
      Node a({APIKEYS_REVOKE_NODE_PATH, "--pg", *pg, "--schema", schema, "--redis", redis_address,
              "--prefix", prefix, "--poll-ms", "0", "--timeout-ms", "20000", "--require",
              "invoices.write"});
      a.send_line(key.info.public_key + ":" + std::string(key.secret_key.reveal()));
      REQUIRE(a.read_line(milliseconds(15'000)) == "ready");
      std::this_thread::sleep_for(milliseconds(200));

      const std::int64_t t0 = steady_ns();
      change.make(key);
      const std::string line = a.read_line(milliseconds(5'000));
      INFO("node A said: '" << line << "'");
      std::istringstream in(line);
      std::string word, code;
      std::int64_t rejected_at = 0;
      in >> word >> code >> rejected_at;
      REQUIRE(word == "rejected");
      CHECK(code == change.expected_code);
      const double ms = static_cast<double>(rejected_at - t0) / 1e6;
      std::cout << "cross-process " << change.what << ": rejected on A " << ms
                << " ms after the change was called on B" << std::endl;
      CHECK(ms < 1000.0);
    }
  }
  drop_schema(*pg, schema);
}

TEST_CASE("A node that cannot reach Redis still gets its revoke to every other node",
          "[servers][revocation]") {
  // Node A is cut off from Redis: its revoke commits to PostgreSQL and reports busy.
  // Node B reaches Redis and holds the key's `valid` in Redis and in its in-process
  // tier. B's revision poll reads the store's change log and drops that key (from its
  // tier and from Redis) within one poll interval, and only that key.
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string schema = apikeys_test::unique_name("apikeys_p");
  const std::string prefix = "apikeys-test:" + apikeys_test::unique_name("p") + ":";
  BlackHole partition;
  {
    apikeys::PostgresStoreOptions so;
    so.schema = schema;
    auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);

    apikeys::RedisCacheOptions co;
    co.host = redis->host;
    co.port = redis->port;
    co.prefix = prefix;
    auto store_b = std::make_shared<apikeys_test::CountingStore>(
        std::make_shared<apikeys::PostgresStore>(*pg, so));
    auto cache_b = std::make_shared<apikeys::RedisCache>(co);
    apikeys::KeyManagerOptions mb;
    mb.validation.cache = cache_b;
    mb.validation.record_last_use = false;  // the default revision poll, 250 ms
    apikeys::KeyManager node_b(store_b, hasher, mb);

    co.host = "127.0.0.1";
    co.port = partition.port();
    apikeys::KeyManagerOptions ma;
    ma.validation.cache = std::make_shared<apikeys::RedisCache>(co);
    ma.validation.record_last_use = false;
    apikeys::KeyManager node_a(std::make_shared<apikeys::PostgresStore>(*pg, so), hasher, ma);

    REQUIRE(apikeys_test::eventually([&] { return cache_b->local_tier_live(); }));
    const apikeys::Uuid account = apikeys_test::account_id(7);
    const auto doomed =
        node_b.create(account, apikeys_test::request("revoked from a partitioned node"));
    const auto kept = node_b.create(account, apikeys_test::request("left alone"));
    for (int i = 0; i < 3; ++i) {
      REQUIRE(node_b.validate(doomed.info.public_key, doomed.secret_key.reveal()).ok());
      REQUIRE(node_b.validate(kept.info.public_key, kept.secret_key.reveal()).ok());
    }
    // Both answered from the cache now.
    const int warm = store_b->finds.load();
    REQUIRE(node_b.validate(doomed.info.public_key, doomed.secret_key.reveal()).ok());
    REQUIRE(store_b->finds.load() == warm);

    const auto t0 = std::chrono::steady_clock::now();
    try {
      (void)node_a.revoke(account, doomed.info.key_id);
      FAIL("revoke reported success although Redis could not be told");
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == apikeys::ErrorCode::busy);
    }
    apikeys::ValidationCode code = apikeys::ValidationCode::valid;
    while (code == apikeys::ValidationCode::valid &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
      std::this_thread::sleep_for(milliseconds(5));
      code = node_b.validate(doomed.info.public_key, doomed.secret_key.reveal()).code;
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "partitioned node's revoke reached the other node after " << ms
              << " ms (revoke() included; poll interval 250 ms)" << std::endl;
    CHECK(code == apikeys::ValidationCode::revoked);
    CHECK(ms < 2000.0);
    // Only the revoked key's verdicts went: the other is still a cache hit.
    const int before = store_b->finds.load();
    CHECK(node_b.validate(kept.info.public_key, kept.secret_key.reveal()).ok());
    CHECK(store_b->finds.load() == before);
  }
  drop_schema(*pg, schema);
}
