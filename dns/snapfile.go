package dns

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/policy"
)

// The sidecar's snapshot files (SnapshotWriter writes them, the Watcher
// reads them). A snapshot is split in two kinds of file in one directory:
//
//   - the head (the Corefile's `snapshot` path), rewritten on every
//     publish: the generation, the networks and endpoints, each endpoint's
//     own layer, and the content hash of every base policy it uses;
//   - one base file per network base policy (its option and runtime
//     rules compiled), named by the SHA-256 of its content
//     (`<head>.base-<hex>`), written only when that base changed.
//
// So an endpoint joining, leaving or being identified rewrites and reloads
// the head alone (a few hundred bytes per endpoint), and the sidecar keeps
// the decoded base it already holds; a rule added writes one new base.
//
// Both files are binary: a magic and version, the body, and the SHA-256 of
// both. A head names each base by its hash and the sidecar checks the base
// file's content against it, so a head is only ever served with the bases
// it was written with: a base of another generation (a file replaced, torn
// or missing) fails the whole head and the generation served is kept. The
// head is replaced by rename, so a reader sees a whole old head or a whole
// new one.
//
// The files carry what DNS decides with, not the whole compiled policy:
// for each name allow its pattern and identity (in the policy's order),
// every deny with its pattern, CIDR and provenance (the EDE text and the
// decision record name it), and InspectAll (learn mode inspects where the
// network does). Ports, paths, IP/CIDR allows and every allow's source
// rules stay in the plugin: DNS asks MatchName(name, 0, 0), which needs
// none of them, and DeniedAddr, which reads the denies. The JSON form of
// EncodeSnapshot carried all of it: 3.8 MB at 10,000 rules, 100-140 ms to
// decode (bench/scale).
const (
	headMagic = "CLWKDNSH\x00\x01"
	baseMagic = "CLWKDNSB\x00\x01"
	// baseInfix separates the head's name from a base's hash.
	baseInfix = ".base-"
)

// errFile marks a file that is not in the form (wrong magic, checksum,
// truncated body): corrupt or torn, never served.
var errFile = errors.New("malformed snapshot file")

// seal appends the SHA-256 of b to b.
func seal(b []byte) []byte {
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// unseal checks magic and checksum and returns the body.
func unseal(b []byte, magic string) ([]byte, error) {
	if len(b) < len(magic)+sha256.Size || string(b[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: no %q header", errFile, strings.TrimRight(magic[:8], "\x00"))
	}
	n := len(b) - sha256.Size
	if sum := sha256.Sum256(b[:n]); !bytes.Equal(sum[:], b[n:]) {
		return nil, fmt.Errorf("%w: checksum mismatch (torn or corrupt)", errFile)
	}
	return b[len(magic):n], nil
}

// enc appends the binary form.
type enc struct{ b []byte }

func (e *enc) u(v uint64)  { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) s(s string)  { e.u(uint64(len(s))); e.b = append(e.b, s...) }
func (e *enc) flag(v bool) { e.b = append(e.b, b2u(v)) }
func (e *enc) addr(a netip.Addr) {
	raw, _ := a.MarshalBinary() // 0, 4 or 16 bytes (+ zone): never fails
	e.s(string(raw))
}
func (e *enc) prefix(p netip.Prefix) {
	e.flag(p.IsValid())
	if p.IsValid() {
		e.addr(p.Addr())
		e.u(uint64(p.Bits()))
	}
}

func b2u(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// dec reads the binary form from one string, so every string it returns
// is a substring of it (no allocation per pattern). The first error
// sticks; every read after it returns zero values.
type dec struct {
	rest string
	err  error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s", errFile, what)
	}
	d.rest = ""
}

func (d *dec) u() uint64 {
	var v uint64
	for i := 0; i < len(d.rest) && i < binary.MaxVarintLen64; i++ {
		c := d.rest[i]
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			d.rest = d.rest[i+1:]
			return v
		}
	}
	d.fail("number")
	return 0
}

// n reads a count, bounded by what the rest of the body could hold (each
// element takes at least least bytes), so a corrupt count never allocates.
func (d *dec) n(least int) int {
	v := d.u()
	if v > uint64(len(d.rest)/least) {
		d.fail("count")
		return 0
	}
	return int(v)
}

func (d *dec) s() string {
	n := d.u()
	if n > uint64(len(d.rest)) {
		d.fail("string")
		return ""
	}
	v := d.rest[:n]
	d.rest = d.rest[n:]
	return v
}

func (d *dec) flag() bool {
	if len(d.rest) == 0 {
		d.fail("flag")
		return false
	}
	c := d.rest[0]
	d.rest = d.rest[1:]
	if c > 1 {
		d.fail("flag")
	}
	return c == 1
}

func (d *dec) addr() netip.Addr {
	raw := d.s()
	var a netip.Addr
	if err := a.UnmarshalBinary([]byte(raw)); err != nil {
		d.fail("address")
	}
	return a
}

func (d *dec) prefix() netip.Prefix {
	if !d.flag() {
		return netip.Prefix{}
	}
	a, bits := d.addr(), d.u()
	if d.err == nil && (!a.IsValid() || bits > uint64(a.BitLen())) {
		d.fail("prefix")
	}
	if d.err != nil {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a, int(bits))
}

// policy writes the part of a Policy DNS decides with (see the file
// comment): the generation, InspectAll, the name allows in order and
// every deny.
func (e *enc) policy(p *policy.Policy) {
	e.u(p.Generation)
	e.flag(p.InspectAll)
	n := 0
	for i := range p.Allows {
		if !p.Allows[i].Prefix.IsValid() {
			n++
		}
	}
	e.u(uint64(n))
	for i := range p.Allows {
		if a := &p.Allows[i]; !a.Prefix.IsValid() {
			e.u(uint64(a.Identity))
			e.s(a.Pattern)
		}
	}
	e.u(uint64(len(p.Denies)))
	for i := range p.Denies {
		d := &p.Denies[i]
		e.s(d.Pattern)
		e.prefix(d.Prefix)
		src := d.Rule.Source
		e.s(string(src.Kind))
		e.s(src.Key)
		e.s(src.Item)
		e.s(src.Network)
		e.s(src.Container)
	}
}

func (d *dec) policy() *policy.Policy {
	p := &policy.Policy{Generation: d.u(), InspectAll: d.flag()}
	p.Allows = make([]policy.Allowed, d.n(2))
	for i := range p.Allows {
		id := d.u()
		if id > uint64(^uint32(0)) {
			d.fail("identity")
		}
		p.Allows[i] = policy.Allowed{Identity: policy.Identity(id), Pattern: d.s()}
	}
	p.Denies = make([]policy.Denied, d.n(7))
	for i := range p.Denies {
		pat := d.s()
		pre := d.prefix()
		src := policy.Provenance{Kind: policy.SourceKind(d.s()), Key: d.s(), Item: d.s(), Network: d.s(), Container: d.s()}
		p.Denies[i] = policy.Denied{Pattern: pat, Prefix: pre,
			Rule: policy.EgressRule{Dst: pat, Action: policy.Deny, Source: src}}
	}
	return p
}

// encodeBase is a base policy's file. The policy's generation is left
// out (the head has the snapshot's): a base compiled again from the same
// rules is the same file, and the sidecar keeps the one it decoded.
func encodeBase(p *policy.Policy) []byte {
	e := enc{b: []byte(baseMagic)}
	q := *p
	q.Generation = 0
	e.policy(&q)
	return seal(e.b)
}

// decodeBase reads a base file whose SHA-256 must be sum.
func decodeBase(b []byte, sum [sha256.Size]byte) (*policy.Policy, error) {
	if sha256.Sum256(b) != sum {
		return nil, fmt.Errorf("%w: base content is not the one the head names (another generation's, torn or corrupt)", errFile)
	}
	body, err := unseal(b, baseMagic)
	if err != nil {
		return nil, err
	}
	d := dec{rest: string(body)}
	p := d.policy()
	if d.err == nil && d.rest != "" {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, d.err
	}
	return p.Indexed(), nil
}

// Policy kinds of an endpoint in the head.
const (
	kindNone    = 0 // no policy (pending, label error)
	kindBase    = 1 // the policy is bases[i]
	kindLayered = 2 // an own layer (inline) over bases[i]
	kindFull    = 3 // a policy without layers (inline)
)

// encodeHead is the head of snap; bases lists the hashes of the base files
// it refers to, by index, and which base policy each is.
func encodeHead(snap *policy.Snapshot, baseOf map[*policy.Policy]int, sums [][sha256.Size]byte) []byte {
	e := enc{b: make([]byte, 0, 4096+256*len(snap.Endpoints))}
	e.b = append(e.b, headMagic...)
	e.u(snap.Generation)
	e.u(uint64(len(sums)))
	for _, s := range sums {
		e.b = append(e.b, s[:]...)
	}
	e.u(uint64(len(snap.Networks)))
	for id, n := range snap.Networks {
		e.s(id)
		if n == nil {
			e.flag(false)
			continue
		}
		e.flag(true)
		e.s(n.ID)
		e.s(n.Name)
		e.s(n.Bridge)
		e.prefix(n.Subnet)
		e.addr(n.Gateway)
		e.u(uint64(len(n.Settings.DNSUpstreams)))
		for _, u := range n.Settings.DNSUpstreams {
			e.s(u)
		}
		e.flag(n.Settings.InspectAll)
		e.flag(n.Settings.ICC)
		if i, ok := baseOf[n.Base]; ok && n.Base != nil {
			e.u(uint64(i) + 1)
		} else {
			e.u(0)
		}
	}
	e.u(uint64(len(snap.Endpoints)))
	for idx, ep := range snap.Endpoints {
		e.u(uint64(idx))
		if ep == nil {
			e.flag(false)
			continue
		}
		e.flag(true)
		e.u(uint64(ep.Index))
		e.s(ep.ID)
		e.s(ep.NetworkID)
		e.addr(ep.IP)
		e.s(ep.MAC)
		e.s(ep.ContainerID)
		e.s(ep.ContainerName)
		e.u(uint64(len(ep.Aliases)))
		for _, a := range ep.Aliases {
			e.s(a)
		}
		e.flag(ep.Pending)
		e.s(ep.LabelError)
		e.flag(!ep.BypassUntil.IsZero())
		if !ep.BypassUntil.IsZero() {
			e.b = binary.LittleEndian.AppendUint64(e.b, uint64(ep.BypassUntil.UnixNano()))
		}
		e.flag(ep.Learn)
		p := ep.Policy
		switch i, ok := baseOf[p]; {
		case p == nil:
			e.u(kindNone)
		case ok:
			e.u(kindBase)
			e.u(uint64(i))
		case p.Base != nil:
			e.u(kindLayered)
			e.u(uint64(baseOf[p.Base]))
			_, own := p.Layers()
			e.policy(own)
		default:
			e.u(kindFull)
			e.policy(p)
		}
	}
	return seal(e.b)
}

// headFile is a decoded head: the snapshot without its bases, and what it
// needs to get them.
type headFile struct {
	snap *policy.Snapshot
	sums [][sha256.Size]byte
	// netBase and epBase give the base index (into sums) of networks and
	// of endpoints whose policy is, or is layered on, a base.
	netBase map[string]int
	epBase  map[uint32]int
}

func decodeHead(b []byte) (*headFile, error) {
	body, err := unseal(b, headMagic)
	if err != nil {
		return nil, err
	}
	d := &dec{rest: string(body)}
	h := &headFile{snap: &policy.Snapshot{Generation: d.u()}, netBase: map[string]int{}, epBase: map[uint32]int{}}
	h.sums = make([][sha256.Size]byte, d.n(sha256.Size))
	for i := range h.sums {
		if len(d.rest) < sha256.Size {
			d.fail("base hash")
			break
		}
		copy(h.sums[i][:], d.rest[:sha256.Size])
		d.rest = d.rest[sha256.Size:]
	}
	baseIdx := func(v uint64) int {
		if v >= uint64(len(h.sums)) {
			d.fail("base reference")
			return 0
		}
		return int(v)
	}
	nn := d.n(2)
	h.snap.Networks = make(map[string]*policy.Network, nn)
	for range nn {
		id := d.s()
		if !d.flag() {
			h.snap.Networks[id] = nil
			continue
		}
		n := &policy.Network{ID: d.s(), Name: d.s(), Bridge: d.s(), Subnet: d.prefix(), Gateway: d.addr()}
		if k := d.n(1); k > 0 {
			n.Settings.DNSUpstreams = make([]string, k)
			for i := range n.Settings.DNSUpstreams {
				n.Settings.DNSUpstreams[i] = d.s()
			}
		}
		n.Settings.InspectAll, n.Settings.ICC = d.flag(), d.flag()
		if v := d.u(); v > 0 {
			h.netBase[id] = baseIdx(v - 1)
		}
		h.snap.Networks[id] = n
	}
	ne := d.n(2)
	h.snap.Endpoints = make(map[uint32]*policy.Endpoint, ne)
	for range ne {
		key := d.u()
		if key > uint64(^uint32(0)) {
			d.fail("endpoint index")
		}
		idx := uint32(key)
		if !d.flag() {
			h.snap.Endpoints[idx] = nil
			continue
		}
		index := d.u()
		if index > uint64(^uint32(0)) {
			d.fail("endpoint index")
		}
		ep := &policy.Endpoint{Index: uint32(index), ID: d.s(), NetworkID: d.s(), IP: d.addr(), MAC: d.s(),
			ContainerID: d.s(), ContainerName: d.s()}
		if k := d.n(1); k > 0 {
			ep.Aliases = make([]string, k)
			for i := range ep.Aliases {
				ep.Aliases[i] = d.s()
			}
		}
		ep.Pending = d.flag()
		ep.LabelError = d.s()
		if d.flag() {
			if len(d.rest) < 8 {
				d.fail("bypass time")
			} else {
				ep.BypassUntil = time.Unix(0, int64(binary.LittleEndian.Uint64([]byte(d.rest[:8]))))
				d.rest = d.rest[8:]
			}
		}
		ep.Learn = d.flag()
		switch kind := d.u(); kind {
		case kindNone:
		case kindBase:
			h.epBase[idx] = baseIdx(d.u())
		case kindLayered:
			h.epBase[idx] = baseIdx(d.u())
			ep.Labels = d.policy()
		case kindFull:
			ep.Policy = d.policy().Indexed()
		default:
			d.fail("policy kind")
		}
		h.snap.Endpoints[idx] = ep
	}
	if d.err == nil && d.rest != "" {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, d.err
	}
	return h, nil
}

// baseName is the file of the base whose SHA-256 is sum, next to head.
func baseName(head string, sum [sha256.Size]byte) string {
	return head + baseInfix + hex.EncodeToString(sum[:])
}

// SnapshotWriter publishes snapshots in the sidecar's form (see the file
// comment): the plugin's SnapshotSink. It keeps which base policies it
// has written, so a publish that changes no base encodes and writes the
// head alone. Safe for concurrent use; one writer per Path.
//
// Files are replaced by rename (a reader never sees half a file) but not
// fsynced: they are derived from the plugin's state, which is durable,
// and the plugin publishes again at every start before it starts the
// sidecar, rewriting every base (a writer trusts only the files it wrote
// itself); a file torn by a crash fails its checksum and is not served.
type SnapshotWriter struct {
	// Path is the head's path, the Corefile's `snapshot`; the base files
	// go next to it.
	Path string

	mu      sync.Mutex
	bases   map[*policy.Policy]baseRef // the bases of the last publish
	written map[[sha256.Size]byte]bool // base files this writer wrote
	prev    map[[sha256.Size]byte]bool // the bases the previous head named
	started bool
	last    PublishStats
}

type baseRef struct {
	sum  [sha256.Size]byte
	size int
}

// PublishStats describes one publish (bench/scale reports them).
type PublishStats struct {
	// Encode and Write split the publish's time: the head and any new
	// base encoded, then written.
	Encode, Write time.Duration
	// HeadBytes is the head's size, BaseBytes the size of every base it
	// names; Written what this publish wrote (the head and new bases).
	HeadBytes, BaseBytes, Written int
	// NewBases counts the base files written.
	NewBases int
}

// Last returns the stats of the last successful publish.
func (w *SnapshotWriter) Last() PublishStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// Publish writes snap: every base policy not written yet, then the head
// (rename), then removes the base files that neither this head nor the
// previous one names (a sidecar that read the previous head an instant
// ago still finds its bases; one that lost the race reads the new head).
func (w *SnapshotWriter) Publish(snap *policy.Snapshot) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	t0 := time.Now()
	var st PublishStats
	dir := filepath.Dir(w.Path)
	if !w.started {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create snapshot directory: %w", err)
		}
	}
	// Every distinct base, in a stable order (networks by id, then bases
	// only endpoints name).
	var order []*policy.Policy
	baseOf := map[*policy.Policy]int{}
	add := func(p *policy.Policy) {
		if _, ok := baseOf[p]; p != nil && !ok {
			baseOf[p] = len(order)
			order = append(order, p)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(snap.Networks)) {
		if n := snap.Networks[id]; n != nil {
			add(n.Base)
		}
	}
	for _, idx := range slices.Sorted(maps.Keys(snap.Endpoints)) {
		if ep := snap.Endpoints[idx]; ep != nil && ep.Policy != nil {
			add(ep.Policy.Base)
		}
	}
	refs := make(map[*policy.Policy]baseRef, len(order))
	sums := make([][sha256.Size]byte, len(order))
	newBases := map[[sha256.Size]byte][]byte{}
	for i, p := range order {
		ref, ok := w.bases[p]
		if !ok {
			b := encodeBase(p)
			ref = baseRef{sum: sha256.Sum256(b), size: len(b)}
			if !w.written[ref.sum] {
				newBases[ref.sum] = b
			}
		}
		refs[p], sums[i] = ref, ref.sum
		st.BaseBytes += ref.size
	}
	head := encodeHead(snap, baseOf, sums)
	t1 := time.Now()
	if w.written == nil {
		w.written = map[[sha256.Size]byte]bool{}
	}
	for sum, b := range newBases {
		if err := writeReplace(baseName(w.Path, sum), b); err != nil {
			return fmt.Errorf("write snapshot base: %w", err)
		}
		w.written[sum] = true
		st.Written += len(b)
		st.NewBases++
	}
	if err := writeReplace(w.Path, head); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	st.Written += len(head)
	st.HeadBytes = len(head)
	t2 := time.Now()
	st.Encode, st.Write = t1.Sub(t0), t2.Sub(t1)

	cur := make(map[[sha256.Size]byte]bool, len(sums))
	for _, s := range sums {
		cur[s] = true
	}
	if len(newBases) > 0 || !w.started {
		w.clean(cur, !w.started)
	}
	w.bases, w.prev, w.started, w.last = refs, cur, true, st
	return nil
}

// clean removes base files named neither by cur nor by the previous head,
// and at the first publish the temporary files a crash left.
func (w *SnapshotWriter) clean(cur map[[sha256.Size]byte]bool, first bool) {
	dir, head := filepath.Split(w.Path)
	ents, err := os.ReadDir(filepath.Clean(dir))
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if first && strings.HasPrefix(name, "."+head+".") && strings.Contains(name, ".tmp-") {
			os.Remove(filepath.Join(dir, name))
			continue
		}
		hexSum, ok := strings.CutPrefix(name, head+baseInfix)
		if !ok {
			continue
		}
		var sum [sha256.Size]byte
		if raw, err := hex.DecodeString(hexSum); err == nil && len(raw) == sha256.Size {
			copy(sum[:], raw)
			if cur[sum] || w.prev[sum] {
				continue
			}
		}
		os.Remove(filepath.Join(dir, name))
		delete(w.written, sum)
	}
}

// writeReplace replaces path with data by rename (no fsync: see
// SnapshotWriter).
func writeReplace(path string, data []byte) error {
	dir, name := filepath.Split(path)
	f, err := os.CreateTemp(filepath.Clean(dir), "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// loadSnapshot builds the snapshot of the head (or JSON) file content b
// read from path, taking the bases it names from have when there, else
// from their files. It returns the bases it used, for the next load.
func loadSnapshot(path string, b []byte, have map[[sha256.Size]byte]*policy.Policy) (*policy.Snapshot, map[[sha256.Size]byte]*policy.Policy, error) {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		// The JSON form (EncodeSnapshot; a file a plugin before the
		// binary form wrote, or one written by hand).
		snap, err := DecodeSnapshot(b)
		return snap, nil, err
	}
	h, err := decodeHead(b)
	if err != nil {
		return nil, nil, err
	}
	bases := make([]*policy.Policy, len(h.sums))
	used := make(map[[sha256.Size]byte]*policy.Policy, len(h.sums))
	for i, sum := range h.sums {
		p := have[sum]
		if p == nil {
			raw, err := os.ReadFile(baseName(path, sum))
			if err != nil {
				return nil, nil, fmt.Errorf("read snapshot base: %w", err)
			}
			if p, err = decodeBase(raw, sum); err != nil {
				return nil, nil, fmt.Errorf("snapshot base %x: %w", sum[:6], err)
			}
		}
		bases[i], used[sum] = p, p
	}
	for id, i := range h.netBase {
		h.snap.Networks[id].Base = bases[i]
	}
	for idx, ep := range h.snap.Endpoints {
		i, ok := h.epBase[idx]
		switch {
		case !ok:
		case ep.Labels == nil:
			ep.Policy = bases[i]
		default:
			l, base := ep.Labels, bases[i]
			ep.Policy = (&policy.Policy{Generation: l.Generation, Allows: l.Allows, Denies: l.Denies,
				InspectAll: base.InspectAll, Base: base}).Indexed()
		}
	}
	return h.snap.Index(), used, nil
}
