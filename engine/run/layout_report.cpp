#include "engine/run/layout_report.h"

#include <unistd.h>

#include <climits>
#include <map>

#include "comm/agreement.h"

namespace moe {

namespace {

// "0-3" for consecutive ranks, else "0 2 5".
std::string rank_list(const std::vector<int>& ranks) {
    bool consecutive = true;
    for (size_t i = 1; i < ranks.size(); ++i) consecutive &= ranks[i] == ranks[i - 1] + 1;
    if (consecutive && ranks.size() > 2) return std::to_string(ranks.front()) + "-" + std::to_string(ranks.back());
    std::string s;
    for (int r : ranks) s += (s.empty() ? "" : " ") + std::to_string(r);
    return s;
}

// At most this many groups or nodes are listed; a large job's report stays short.
constexpr size_t kMaxListed = 16;

}  // namespace

std::string host_name() {
    char host[HOST_NAME_MAX + 1] = {0};
    gethostname(host, sizeof host - 1);
    return host;
}

int local_rank(Communicator& world) {
    const std::vector<std::string> hosts = all_gather_strings(world, host_name());
    int below = 0;
    for (int r = 0; r < world.rank(); ++r) below += hosts[size_t(r)] == hosts[size_t(world.rank())];
    return below;
}

std::vector<RankPlace> gather_places(Communicator& world, const std::string& device) {
    std::vector<RankPlace> places;
    for (const std::string& s : all_gather_strings(world, host_name() + "\n" + device)) {
        const size_t nl = s.find('\n');
        places.push_back({s.substr(0, nl), s.substr(nl + 1)});
    }
    return places;
}

std::string layout_report(const std::vector<RankPlace>& places, int ep, int experts_per_rank) {
    const int world = int(places.size()), dp = world / ep;
    std::map<std::string, std::vector<int>> nodes;  // in order of first rank, via the vector below
    std::vector<std::string> node_order;
    for (int r = 0; r < world; ++r) {
        if (!nodes.count(places[size_t(r)].host)) node_order.push_back(places[size_t(r)].host);
        nodes[places[size_t(r)].host].push_back(r);
    }
    std::string out = "layout: " + std::to_string(world) + " ranks on " + std::to_string(nodes.size()) +
                      " node(s), expert parallel " + std::to_string(ep) + " x data parallel " + std::to_string(dp) +
                      ", " + std::to_string(experts_per_rank) + " experts per rank";
    for (size_t i = 0; i < node_order.size() && i < kMaxListed; ++i) {
        const std::vector<int>& ranks = nodes[node_order[i]];
        std::string devices;
        for (int r : ranks) devices += (devices.empty() ? "" : " ") + places[size_t(r)].device;
        out += "\n  node " + node_order[i] + ": ranks " + rank_list(ranks) + " on " + devices;
    }
    if (node_order.size() > kMaxListed) out += "\n  ... " + std::to_string(node_order.size() - kMaxListed) + " more nodes";
    // EP groups are consecutive ranks; expert-DP groups take one rank of each.
    std::string ep_groups, dp_groups;
    for (int g = 0; g < dp && size_t(g) < kMaxListed; ++g) {
        std::vector<int> members;
        for (int i = 0; i < ep; ++i) members.push_back(g * ep + i);
        ep_groups += " [" + rank_list(members) + "]";
    }
    for (int g = 0; g < ep && size_t(g) < kMaxListed; ++g) {
        std::vector<int> members;
        for (int i = 0; i < dp; ++i) members.push_back(g + i * ep);
        dp_groups += " [" + rank_list(members) + "]";
    }
    out += "\n  EP groups (exchange tokens):" + ep_groups + (size_t(dp) > kMaxListed ? " ..." : "");
    out += "\n  expert-DP groups (average expert gradients):" + dp_groups + (size_t(ep) > kMaxListed ? " ..." : "");
    return out;
}

std::string shared_gpu_problem(const std::vector<RankPlace>& places) {
    std::map<std::pair<std::string, std::string>, int> first;  // (host, device) -> first rank
    for (int r = 0; r < int(places.size()); ++r) {
        const RankPlace& p = places[size_t(r)];
        if (p.device == "cpu") continue;
        const auto [it, fresh] = first.emplace(std::make_pair(p.host, p.device), r);
        if (!fresh)
            return "ranks " + std::to_string(it->second) + " and " + std::to_string(r) + " would share " + p.device +
                   " on node " + p.host + ": start one rank per GPU (see README, \"Running on a cluster\"), or set "
                   "parallel.allow_shared_gpu=true";
    }
    return "";
}

}  // namespace moe
