# cmake -DREADME=... -DEXAMPLE=... -P readme_in_sync.cmake
# Fails when the first ```cpp block of README.md is not examples/basic.cpp (without the
# file's leading // comment lines), so the README's usage example always compiles and runs.
file(READ "${README}" readme)
string(FIND "${readme}" "```cpp\n" begin)
if(begin EQUAL -1)
  message(FATAL_ERROR "README.md has no ```cpp block")
endif()
math(EXPR begin "${begin} + 7")
string(SUBSTRING "${readme}" ${begin} -1 rest)
string(FIND "${rest}" "```" end)
string(SUBSTRING "${rest}" 0 ${end} snippet)

file(READ "${EXAMPLE}" example)
string(REGEX REPLACE "^(//[^\n]*\n)+" "" example "${example}")
if(NOT snippet STREQUAL example)
  message(FATAL_ERROR "README.md's usage example differs from ${EXAMPLE}: copy the file (without its header comment) into the README")
endif()
message(STATUS "README.md's usage example is ${EXAMPLE}")
