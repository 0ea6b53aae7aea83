# Server suites: PostgresStore, RedisCache and RedisLimiter against real servers, their
# fault tests, what the Redis classes tell observers and the two-process revocation
# test. Included from tests/CMakeLists.txt (Catch2 found, Catch included); built only
# with -DAPIKEYS_WITH_POSTGRES=ON and/or -DAPIKEYS_WITH_REDIS=ON. Every test carries
# the label `servers`; they find their servers through APIKEYS_TEST_PG /
# APIKEYS_TEST_REDIS (scripts/servers.sh start) and skip with a message without them
# (fail under APIKEYS_REQUIRE_SERVERS=1).
if(NOT APIKEYS_WITH_POSTGRES AND NOT APIKEYS_WITH_REDIS)
  return()
endif()

set(_apikeys_server_sources)
set(_apikeys_server_includes)
set(_apikeys_server_links)
if(APIKEYS_WITH_POSTGRES)
  list(APPEND _apikeys_server_sources servers/postgres_store_test.cpp
    servers/postgres_credits_test.cpp)
  # The tests use libpq directly to drop the schemas they made.
  list(APPEND _apikeys_server_includes ${_apikeys_pq_include})
  list(APPEND _apikeys_server_links ${_apikeys_pq_link})
endif()
if(APIKEYS_WITH_REDIS)
  list(APPEND _apikeys_server_sources servers/redis_cache_test.cpp
    servers/redis_limiter_test.cpp servers/redis_observer_test.cpp)
  # And hiredis directly to look inside Redis.
  list(APPEND _apikeys_server_includes ${APIKEYS_HIREDIS_INCLUDE_DIRS})
  list(APPEND _apikeys_server_links ${APIKEYS_HIREDIS_LINK_LIBRARIES})
endif()
if(APIKEYS_WITH_POSTGRES AND APIKEYS_WITH_REDIS)
  list(APPEND _apikeys_server_sources servers/revocation_servers_test.cpp
    servers/cli_servers_test.cpp)
  # Node A of the two-process revocation test.
  add_executable(apikeys_revoke_node servers/revoke_node.cpp)
  target_link_libraries(apikeys_revoke_node PRIVATE apikeys::apikeys Threads::Threads)
  target_include_directories(apikeys_revoke_node PRIVATE ${APIKEYS_TEST_INCLUDE_DIRS}
  ${CMAKE_CURRENT_SOURCE_DIR}/servers)
  apikeys_set_warnings(apikeys_revoke_node)
endif()

# alloc_probe.cpp replaces the program's operator new and delete (allocation failures,
# unwiped frees): this program only.
add_executable(apikeys_server_tests ${_apikeys_server_sources}
  support/alloc_probe.cpp)
target_link_libraries(apikeys_server_tests PRIVATE apikeys::apikeys Catch2::Catch2WithMain Threads::Threads
  ${_apikeys_server_links})
apikeys_test_pch(apikeys_server_tests)
# src: white-box checks of the record description (src/record_fields.hpp).
target_include_directories(apikeys_server_tests PRIVATE ${APIKEYS_TEST_INCLUDE_DIRS}
  ${CMAKE_CURRENT_SOURCE_DIR}/servers ${PROJECT_SOURCE_DIR}/src)
target_include_directories(apikeys_server_tests SYSTEM PRIVATE ${_apikeys_server_includes})
apikeys_set_warnings(apikeys_server_tests)
if(TARGET apikeys_revoke_node)
  target_compile_definitions(apikeys_server_tests PRIVATE
    "APIKEYS_REVOKE_NODE_PATH=\"$<TARGET_FILE:apikeys_revoke_node>\"")
  add_dependencies(apikeys_server_tests apikeys_revoke_node)
endif()
# The CLI driven against PostgreSQL and Redis (cli_servers_test.cpp parses its JSON).
if(TARGET apikeys_cli)
  target_compile_definitions(apikeys_server_tests PRIVATE
    "APIKEYS_CLI_PATH=\"$<TARGET_FILE:apikeys_cli>\"")
  target_link_libraries(apikeys_server_tests PRIVATE nlohmann_json::nlohmann_json)
  add_dependencies(apikeys_server_tests apikeys_cli)
endif()

# The fault tests stop and restart the shared servers: no two server tests at once
# (other suites may still run beside them).
catch_discover_tests(apikeys_server_tests
  EXTRA_ARGS --warn NoTests
  WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}
  PROPERTIES LABELS servers RESOURCE_LOCK apikeys_servers TIMEOUT 300)
