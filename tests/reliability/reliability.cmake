# Reliability suites: revocation stress, crash safety, storage faults, hostile
# input and secrets in messages. Included from tests/CMakeLists.txt, which has already
# found Catch2, SQLite3 and nlohmann_json and included Catch.
#
# One executable; each suite gets its own CTest label (reliability-<suite>: one label,
# as Catch's discovery passes no list) through a Catch tag filter, so
# `ctest -L stress` (or crash, faults, hostile, secrets) runs just that suite.

# The child process of the crash test: creates keys in a SqliteStore and reports each
# one on stdout once create() has returned, and makes audited changes. A separate program, so the (multi-threaded)
# test process only ever fork()s to exec() it.
add_executable(apikeys_crash_child reliability/crash_child.cpp)
target_link_libraries(apikeys_crash_child PRIVATE apikeys::apikeys Threads::Threads)
target_include_directories(apikeys_crash_child PRIVATE ${APIKEYS_TEST_INCLUDE_DIRS}
  ${CMAKE_CURRENT_SOURCE_DIR}/reliability)
apikeys_set_warnings(apikeys_crash_child)

add_executable(apikeys_reliability_tests
  reliability/crash_test.cpp
  reliability/fault_test.cpp
  reliability/hostile_input_test.cpp
  reliability/secrets_test.cpp
  reliability/stress_test.cpp
)
target_link_libraries(apikeys_reliability_tests PRIVATE apikeys::apikeys Catch2::Catch2WithMain
  Threads::Threads SQLite::SQLite3 nlohmann_json::nlohmann_json)
apikeys_test_pch(apikeys_reliability_tests)
target_include_directories(apikeys_reliability_tests PRIVATE ${APIKEYS_TEST_INCLUDE_DIRS}
  ${CMAKE_CURRENT_SOURCE_DIR}/reliability)
apikeys_set_warnings(apikeys_reliability_tests)
target_compile_definitions(apikeys_reliability_tests PRIVATE
  "APIKEYS_CRASH_CHILD_PATH=\"$<TARGET_FILE:apikeys_crash_child>\"")
add_dependencies(apikeys_reliability_tests apikeys_crash_child)
if(TARGET apikeys_cli)
  target_compile_definitions(apikeys_reliability_tests PRIVATE
    "APIKEYS_CLI_PATH=\"$<TARGET_FILE:apikeys_cli>\"")
  add_dependencies(apikeys_reliability_tests apikeys_cli)
endif()

# The stress, crash and secrets suites take from seconds (Debug) to most of a minute
# (sanitizers) per test: their COST makes a parallel ctest start them early, after the
# interoperability test, rather than last (the reliability tests are defined after the
# unit tests), where they would run alone.
set(_apikeys_reliability_cost_stress 80)
set(_apikeys_reliability_cost_secrets 60)
set(_apikeys_reliability_cost_crash 40)
foreach(label stress crash faults hostile secrets)
  set(_cost 0)
  if(DEFINED _apikeys_reliability_cost_${label})
    set(_cost ${_apikeys_reliability_cost_${label}})
  endif()
  catch_discover_tests(apikeys_reliability_tests
    EXTRA_ARGS --warn NoTests
    TEST_SPEC "[${label}]"
    WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}
    PROPERTIES LABELS "reliability-${label}" TIMEOUT 600 COST ${_cost})
endforeach()
