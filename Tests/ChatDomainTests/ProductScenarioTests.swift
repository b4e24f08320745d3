import ChatDomain
import ChatScenarioKit
import Testing

/// The product guide's scenarios on the in-memory adapters.
@Suite("Product scenarios", .serialized)
struct ProductScenarioTests {
    @Test("Scenario", arguments: ProductScenario.all)
    func scenario(_ scenario: ProductScenario) async throws {
        try await scenario.run()
    }
}
