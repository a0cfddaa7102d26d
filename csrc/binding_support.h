// What the binding modules share: reading geometry objects and buffers, and binding one op
// (def_op). The op list itself is op_bindings.h.
//
// Every op takes its buffers, then a geometry object (any Python object with the fields of
// ConvGeometry / PoolGeometry / NormGeometry as attributes, e.g. fastconv._args'
// dataclasses), then `stream` (a cudaStream_t as an int; ignored off the GPU). The Python
// layer validates every call; this layer checks again that each buffer has its slot's type
// (float32, or uint8 for pooling winners), is C-contiguous and exactly the size its geometry
// says, so a direct call with a wrong buffer raises instead of touching memory. An empty
// batch runs no kernel: outputs summed over the batch (weight and bias gradients) are zeroed,
// the others are empty already.
#pragma once
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>

#include "geometry.h"

namespace fastconv::bindings {

namespace py = pybind11;

// ---- geometry objects ------------------------------------------------------------------

template <class G>
G read_geometry(const py::handle& source) {
  G g{};
  g.visit_fields([&](const char* name, auto& field) {
    if (!py::hasattr(source, name))
      throw py::type_error(std::string("geometry has no field '") + name + "'");
    field = source.attr(name).template cast<std::remove_reference_t<decltype(field)>>();
  });
  return g;
}

template <class G>
py::dict geometry_dict(G g) {
  py::dict d;
  g.visit_fields([&](const char* name, auto& field) { d[name] = field; });
  return d;
}

template <class G>
std::string describe(G g) {
  std::string text;
  g.visit_fields([&](const char* name, auto& field) {
    text += (text.empty() ? "" : " ") + std::string(name) + "=" + std::to_string(field);
  });
  return text;
}

inline void require(bool ok, const char* what) {
  if (!ok) throw py::value_error(std::string("invalid geometry: ") + what);
}

inline void validate(const ConvGeometry& g) {
  require(g.n >= 0 && g.c_in > 0 && g.h > 0 && g.w > 0 && g.c_out > 0 && g.kh > 0 && g.kw > 0,
          "sizes must be positive");
  require(g.stride_h > 0 && g.stride_w > 0 && g.dil_h > 0 && g.dil_w > 0, "stride/dilation > 0");
  require(g.groups > 0 && g.c_in % g.groups == 0 && g.c_out % g.groups == 0, "groups");
  require(g.oh > 0 && g.ow > 0, "empty output");
  // Windows may reach past the input on any side: every kernel bounds-checks its reads.
  require(g.pad_top >= 0 && g.pad_left >= 0, "padding must be >= 0");
}

inline void validate(const PoolGeometry& g) {
  require(g.n >= 0 && g.c > 0 && g.h > 0 && g.w > 0 && g.kh > 0 && g.kw > 0, "sizes");
  require(g.stride_h > 0 && g.stride_w > 0, "stride > 0");
  require(g.kind >= 0 && g.kind <= 3, "pool kind");
  require(g.oh > 0 && g.ow > 0 && g.pad_top >= 0 && g.pad_left >= 0, "output size");
  // Every window must hold a real cell: first and last windows overlap the input.
  require(g.pad_top < g.kh && g.pad_left < g.kw && (g.oh - 1) * g.stride_h - g.pad_top < g.h &&
              (g.ow - 1) * g.stride_w - g.pad_left < g.w,
          "a window would hold only padding");
}

inline void validate(const NormGeometry& g) {
  require(g.outer > 0 && g.channels > 0 && g.inner > 0,
          "(outer, channels, inner) must be positive");
  require(g.eps >= 0, "eps must be >= 0");
  require(g.activation >= 0 && g.activation <= 2,
          "activation must be 0 (none), 1 (relu) or 2 (gelu)");
}

// ---- buffers ---------------------------------------------------------------------------

// A summed output (a gradient summed over the batch) is zeroed when the batch is empty.
enum class Role { in, optional_in, out, optional_out, summed_out, optional_summed_out };
enum class Dtype { f32, u8 };

// One buffer argument of an op: its name, role, element count for a geometry and type.
template <class G>
struct Slot {
  const char* name;
  Role role;
  int64_t (G::*size)() const;
  Dtype dtype = Dtype::f32;
  bool output() const { return role != Role::in && role != Role::optional_in; }
  bool optional() const {
    return role == Role::optional_in || role == Role::optional_out ||
           role == Role::optional_summed_out;
  }
  bool summed() const { return role == Role::summed_out || role == Role::optional_summed_out; }
};

template <class G>
Slot<G> in(const char* n, int64_t (G::*s)() const, Dtype t = Dtype::f32) {
  return {n, Role::in, s, t};
}
template <class G>
Slot<G> optional_in(const char* n, int64_t (G::*s)() const) {
  return {n, Role::optional_in, s};
}
template <class G>
Slot<G> out(const char* n, int64_t (G::*s)() const, Dtype t = Dtype::f32) {
  return {n, Role::out, s, t};
}
template <class G>
Slot<G> optional_out(const char* n, int64_t (G::*s)() const) {
  return {n, Role::optional_out, s};
}
template <class G>
Slot<G> summed_out(const char* n, int64_t (G::*s)() const) {
  return {n, Role::summed_out, s};
}
template <class G>
Slot<G> optional_summed_out(const char* n, int64_t (G::*s)() const) {
  return {n, Role::optional_summed_out, s};
}

// Where a buffer's elements are, as found by a Backend's reader.
struct View {
  void* data;
  int64_t size;
  bool writeable;
};

// A buffer as a kernel argument: its slot's element type decides which pointer it becomes.
struct Buffer {
  void* data = nullptr;
  operator float*() const { return static_cast<float*>(data); }
  operator uint8_t*() const { return static_cast<uint8_t*>(data); }
};

inline const char* type_name(Dtype t) { return t == Dtype::u8 ? "uint8" : "float32"; }

inline void check_view(const View& v, int64_t size, const char* name, bool output) {
  if (v.size != size)
    throw py::value_error(std::string(name) + " has " + std::to_string(v.size) +
                          " elements, the geometry needs " + std::to_string(size));
  if (output && !v.writeable) throw py::value_error(std::string(name) + " is read-only");
}

inline bool has_format(const py::buffer_info& info, Dtype t) {
  const char code = t == Dtype::u8 ? 'B' : 'f';
  const std::string& f = info.format;
  return info.itemsize == (t == Dtype::u8 ? 1 : 4) &&
         (f == std::string(1, code) || f == std::string("<") + code ||
          f == std::string("=") + code);
}

// A host array through the buffer protocol (NumPy).
inline View host_view(const py::handle& object, const char* name, Dtype t) {
  if (!py::isinstance<py::buffer>(object))
    throw py::type_error(std::string(name) + " must be a " + type_name(t) + " array, got " +
                         std::string(py::str(object.get_type().attr("__name__"))));
  const py::buffer_info info = py::reinterpret_borrow<py::buffer>(object).request();
  if (!has_format(info, t))
    throw py::type_error(std::string(name) + " must be a " + type_name(t) + " array");
  int64_t expected = info.itemsize;
  for (int64_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != expected)
      throw py::value_error(std::string(name) + " must be C-contiguous");
    expected *= info.shape[d];
  }
  return {info.ptr, static_cast<int64_t>(info.size), !info.readonly};
}

// A device array through __cuda_array_interface__ (CuPy, Numba, PyTorch...).
inline View cuda_view(const py::handle& object, const char* name, Dtype t) {
  const py::dict cai = object.attr("__cuda_array_interface__");
  if (py::str(cai["typestr"]).cast<std::string>() != (t == Dtype::u8 ? "|u1" : "<f4"))
    throw py::type_error(std::string(name) + " must be a " + type_name(t) + " array");
  const py::tuple shape = cai["shape"];
  int64_t size = 1;
  for (const auto& d : shape) size *= d.cast<int64_t>();
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const py::tuple strides = cai["strides"];
    int64_t expected = t == Dtype::u8 ? 1 : 4;
    for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
      if (shape[d].cast<int64_t>() != 1 && strides[d].cast<int64_t>() != expected)
        throw py::value_error(std::string(name) + " must be C-contiguous");
      expected *= shape[d].cast<int64_t>();
    }
  }
  const py::tuple data = cai["data"];
  return {reinterpret_cast<void*>(data[0].cast<std::uintptr_t>()), size, !data[1].cast<bool>()};
}

// ---- ops -------------------------------------------------------------------------------

template <std::size_t>
using Object = py::object;

template <class Backend, class G, class Kernel, std::size_t... I>
void def_op(py::module_& m, const char* name, Kernel kernel,
            const std::array<Slot<G>, sizeof...(I)>& slots, std::index_sequence<I...>) {
  m.def(
      name,
      [name, kernel, slots](const Object<I>&... objects, const py::handle& geometry,
                            std::uintptr_t stream) {
        const G g = read_geometry<G>(geometry);
        validate(g);
        std::array<Buffer, sizeof...(I)> p{};
        const py::handle handles[] = {objects...};
        for (std::size_t i = 0; i < slots.size(); ++i) {
          const Slot<G>& s = slots[i];
          if (handles[i].is_none()) {
            if (!s.optional())
              throw py::type_error(std::string(s.name) + " must be an array, got None");
            continue;
          }
          const View v = Backend::view(handles[i], s.name, s.dtype);
          check_view(v, (g.*s.size)(), s.name, s.output());
          p[i].data = v.data;
        }
        if (g.batch() == 0) {
          for (std::size_t i = 0; i < slots.size(); ++i)
            if (slots[i].summed() && p[i].data) Backend::zero(p[i], (g.*slots[i].size)(), stream);
          return;
        }
        Backend::run(name, g, stream, [&](auto& launch) { kernel(launch, g, p[I]...); });
      },
      py::arg(slots[I].name)..., py::arg("geometry"), py::arg("stream") = 0);
}

template <class Backend, class G, class Kernel, class... Slots>
void def_op(py::module_& m, const char* name, Kernel kernel, Slots... slots) {
  def_op<Backend, G>(m, name, kernel, std::array<Slot<G>, sizeof...(Slots)>{slots...},
                     std::index_sequence_for<Slots...>{});
}

template <class G>
void def_geometry_echo(py::module_& m, const char* name) {
  m.def(
      name, [](const py::handle& g) { return geometry_dict(read_geometry<G>(g)); },
      py::arg("geometry"), "The geometry as the native code reads it (for tests).");
}

}  // namespace fastconv::bindings
