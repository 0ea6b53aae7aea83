// Private to PostgresStore: one libpq connection driven with the asynchronous API so
// that every wait (connect, send, reply) is bounded by a client-side deadline, and the
// mapping of libpq/server failures onto apikeys::Error codes.
// Messages never carry libpq's text about connecting or about the connection string:
// it quotes the string's values, and a mis-encoded string's "values" are pieces of its
// password. Failures to connect are reported as fixed text, one per kind of failure.
// Thread-safety: a PgConnection is used by one thread at a time (the pool hands it out).
// Ownership: owns its PGconn and every PGresult it returns (through PgResult).
#ifndef APIKEYS_SRC_PG_CONNECTION_HPP
#define APIKEYS_SRC_PG_CONNECTION_HPP

#include <libpq-fe.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "apikeys/error.hpp"

namespace apikeys::pg {

using SteadyClock = std::chrono::steady_clock;
using Deadline = SteadyClock::time_point;

struct ResultDeleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, ResultDeleter>;

/// Thrown when the connection itself is gone (server restarted, network failure,
/// client-side timeout): the connection must be discarded. Error(busy).
class ConnectionLost : public Error {
 public:
  ConnectionLost(const std::string& message, bool timed_out)
      : Error(ErrorCode::busy, message), timed_out_(timed_out) {}
  [[nodiscard]] bool timed_out() const noexcept { return timed_out_; }

 private:
  bool timed_out_;
};

/// Parses `conninfo` as libpq will (no I/O) and throws Error(invalid_argument), with a
/// fixed message, if it is malformed. Wipes libpq's parsed copies of it.
void check_conninfo(const std::string& conninfo);

class PgConnection {
 public:
  /// Connects within `deadline`; throws ConnectionLost (busy) on failure or timeout.
  /// REQUIRES: check_conninfo(conninfo) passed.
  PgConnection(const std::string& conninfo, Deadline deadline);
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  /// Runs a simple query (may hold several statements); returns the last result.
  PgResult exec(std::string_view op, const std::string& sql, Deadline deadline);
  /// Runs a parameterised query; `formats` may be null (all text).
  PgResult exec_params(std::string_view op, const std::string& sql, int n,
                       const char* const* values, const int* lengths, const int* formats,
                       Deadline deadline);
  /// Prepares `sql` under `name` on this connection.
  void prepare(std::string_view op, const char* name, const std::string& sql, Deadline deadline);
  /// Runs the prepared statement `name`.
  PgResult exec_prepared(std::string_view op, const char* name, int n, const char* const* values,
                         const int* lengths, const int* formats, Deadline deadline);

  /// False when the server closed the connection while it sat idle (it restarted, or
  /// ended the session): a cheap non-blocking check, made before a use that is not
  /// retried.
  [[nodiscard]] bool healthy() noexcept;

  /// True when the connection is outside any transaction with no command in flight:
  /// the only state in which the pool may hand it to another call. A command given up
  /// at its deadline, or a ROLLBACK that failed, leaves it otherwise. No I/O.
  [[nodiscard]] bool reusable() const noexcept;

 private:
  [[noreturn]] void connect_failed(bool timed_out);
  PgResult collect(std::string_view op, Deadline deadline);
  [[noreturn]] void lost(std::string_view op, const char* what, bool timed_out);
  PGconn* conn_ = nullptr;
  // Set by the notice receiver when the server announced the end of the session (a
  // FATAL error, which libpq hands to the receiver while the connection is idle).
  bool ended_ = false;
};

}  // namespace apikeys::pg

#endif  // APIKEYS_SRC_PG_CONNECTION_HPP
