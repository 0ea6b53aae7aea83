// A plain hiredis client for the Redis suites: raw commands to look inside Redis or to
// change it behind the library's back, and a janitor that deletes the keys a test made.
// Thread-safety: one client per thread. Ownership: a client owns its connection.
#ifndef APIKEYS_TESTS_REDIS_TEST_CLIENT_HPP
#define APIKEYS_TESTS_REDIS_TEST_CLIENT_HPP

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "server_support.hpp"

namespace apikeys_test {

class RedisTestClient {
 public:
  explicit RedisTestClient(const RedisAddress& a) {
    timeval tv{2, 0};
    c_ = redisConnectWithTimeout(a.host.c_str(), a.port, tv);
    REQUIRE(c_ != nullptr);
    REQUIRE(c_->err == 0);
  }
  ~RedisTestClient() { redisFree(c_); }
  RedisTestClient(const RedisTestClient&) = delete;
  RedisTestClient& operator=(const RedisTestClient&) = delete;

  // Runs a command; returns its string, status or integer reply as text ("" for nil).
  // An error reply fails the test.
  std::string run(const std::vector<std::string>& args) {
    auto* r = static_cast<redisReply*>(command(args));
    REQUIRE(r != nullptr);
    std::string out;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) out.assign(r->str, r->len);
    if (r->type == REDIS_REPLY_INTEGER) out = std::to_string(r->integer);
    const bool error = r->type == REDIS_REPLY_ERROR;
    const std::string text = error ? std::string(r->str, r->len) : std::string();
    freeReplyObject(r);
    if (error) FAIL("redis: " << text);
    return out;
  }

  // Runs a command and drops its reply, whatever it is. Never throws (for destructors).
  void quiet(const std::vector<std::string>& args) noexcept {
    void* r = command(args);
    if (r != nullptr) freeReplyObject(r);
  }

  // Every key under `prefix`.
  std::vector<std::string> keys(const std::string& prefix) {
    const std::string pattern = prefix + "*";
    auto* r = static_cast<redisReply*>(command({"KEYS", pattern}));
    REQUIRE(r != nullptr);
    std::vector<std::string> out;
    for (std::size_t i = 0; i < r->elements; ++i)
      out.emplace_back(r->element[i]->str, r->element[i]->len);
    freeReplyObject(r);
    return out;
  }

  // Every key under `prefix`, and each key's value when it is a string ("" otherwise).
  std::vector<std::pair<std::string, std::string>> dump(const std::string& prefix) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& k : keys(prefix)) {
      auto* r = static_cast<redisReply*>(command({"GET", k}));
      REQUIRE(r != nullptr);
      out.emplace_back(k,
                       r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : std::string());
      freeReplyObject(r);
    }
    return out;
  }

  // Overwrites a string value, keeping its expiry.
  void set_keep_ttl(const std::string& key, const std::string& value) {
    (void)run({"SET", key, value, "KEEPTTL"});
  }
  // Deletes a key, as an eviction would.
  void del(const std::string& key) { (void)run({"DEL", key}); }
  // Closes every connection of `type` ("normal", "pubsub") but this one, as a server
  // that dropped its clients would.
  void kill_clients(const char* type) { (void)run({"CLIENT", "KILL", "TYPE", type}); }

  // Redis's clock, in microseconds.
  std::int64_t time_us() {
    auto* r = static_cast<redisReply*>(command({"TIME"}));
    REQUIRE(r != nullptr);
    REQUIRE(r->type == REDIS_REPLY_ARRAY);
    const std::int64_t us =
        std::atoll(r->element[0]->str) * 1'000'000 + std::atoll(r->element[1]->str);
    freeReplyObject(r);
    return us;
  }

 private:
  void* command(const std::vector<std::string>& args) noexcept {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    try {
      for (const auto& a : args) {
        argv.push_back(a.c_str());
        lens.push_back(a.size());
      }
    } catch (...) {
      return nullptr;
    }
    return redisCommandArgv(c_, static_cast<int>(argv.size()), argv.data(), lens.data());
  }

  redisContext* c_ = nullptr;
};

// Deletes every key under the prefixes it made (make()), when it dies.
struct RedisJanitor {
  RedisAddress address;
  std::vector<std::string> prefixes;
  const char* tag = "redis";  // in each prefix's name
  ~RedisJanitor() {
    try {
      RedisTestClient c(address);
      for (const auto& p : prefixes)
        for (const auto& k : c.keys(p)) c.quiet({"DEL", k});
    } catch (...) {
    }
  }
  // A fresh prefix.
  std::string make() {
    prefixes.push_back("apikeys-test:" + unique_name(tag) + ":");
    return prefixes.back();
  }
};

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_REDIS_TEST_CLIENT_HPP
