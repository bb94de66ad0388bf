# Every third-party dependency comes from Debian 12 packages
# (scripts/install_deps.sh). A missing one is a configure error.
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(yaml-cpp CONFIG REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)
find_package(ucx CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(benchmark CONFIG REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
# OpenBLAS, OpenMP build: BLAS calls and the kernels' own OpenMP loops share
# one thread pool. With the pthread build the two pools spin against each
# other and small GEMMs run up to 10x slower. The build-tree RPATH points at
# this directory, so the binaries load this variant whatever the system-wide
# libopenblas alternative is.
set(_sy_openblas_arch_dir /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
find_library(SWITCHYARD_OPENBLAS_LIBRARY openblas PATHS ${_sy_openblas_arch_dir} NO_DEFAULT_PATH)
find_path(SWITCHYARD_CBLAS_INCLUDE_DIR cblas.h
          PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
if(NOT SWITCHYARD_OPENBLAS_LIBRARY OR NOT SWITCHYARD_CBLAS_INCLUDE_DIR)
  message(FATAL_ERROR "OpenBLAS (OpenMP build) not found in ${_sy_openblas_arch_dir}: "
                      "install libopenblas-openmp-dev (scripts/install_deps.sh)")
endif()
add_library(sy_blas INTERFACE)
target_link_libraries(sy_blas INTERFACE ${SWITCHYARD_OPENBLAS_LIBRARY} OpenMP::OpenMP_CXX)
target_include_directories(sy_blas SYSTEM INTERFACE ${SWITCHYARD_CBLAS_INCLUDE_DIR})
