@testable import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// The pure decision types, tested without awaits.
@Suite("Decisions")
struct DecisionTests {
    private let generator = MessageIDGenerator(clock: ManualWallClock())
    private let sender = User(id: "alice", username: "Alice")
    private let now = Date(timeIntervalSince1970: 1_767_693_600)

    private func entry(_ content: String) -> QueueEntry {
        let message = Message(id: self.generator.next(), chatID: "c", senderID: "alice", content: content, createdAt: self.now)
        return QueueEntry(message: message, sender: self.sender, recipient: "bob", enqueuedAt: self.now)
    }

    @Test("An offline recipient's messages go to the offline path; only the first starts the flusher")
    func offlineRouting() {
        var lane = RecipientLane()
        let result1 = lane.route(self.entry("a"))
        #expect(result1 == .enqueue(startFlusher: true))
        let result2 = lane.route(self.entry("b"))
        #expect(result2 == .enqueue(startFlusher: false))
        let result3 = lane.takeEnqueueBatch()
        #expect(result3?.map(\.message.content) == ["a", "b"])
        let result4 = lane.takeEnqueueBatch()
        #expect(result4 == nil)
        let result5 = lane.route(self.entry("c"))
        #expect(result5 == .enqueue(startFlusher: true), "the flusher stopped, so the next starts it")
    }

    @Test("Connected with a backlog: queue until a drain pass ends quiet, then push")
    func drainThenLive() {
        var lane = RecipientLane()
        let first = lane.opened("b1")
        #expect(first)
        #expect(lane.mode == .awaitingDrain)
        let route = lane.route(self.entry("behind"))
        #expect(route == .enqueue(startFlusher: true))
        let began = lane.beginDrain()
        #expect(began)
        let again = lane.beginDrain()
        #expect(!again, "one drain at a time")
        #expect(lane.passSnapshot == nil, "no pass starts while a queue write is in flight")
        _ = lane.takeEnqueueBatch()
        _ = lane.takeEnqueueBatch()
        let snapshot = lane.passSnapshot
        #expect(snapshot != nil, "the queue write landed")
        let live = lane.finishDrainPass(snapshot: snapshot ?? 0)
        #expect(live)
        #expect(lane.mode == .live)
        let push = lane.route(self.entry("live"))
        #expect(push == .push(["b1"]))
    }

    @Test("A message routed during a drain pass forces another pass")
    func routedDuringPass() {
        var lane = RecipientLane()
        _ = lane.opened("b1")
        _ = lane.beginDrain()
        let snapshot = lane.passSnapshot ?? 0
        _ = lane.route(self.entry("during"))
        _ = lane.takeEnqueueBatch()
        _ = lane.takeEnqueueBatch()
        let ended = lane.finishDrainPass(snapshot: snapshot)
        #expect(!ended)
        #expect(lane.mode == .draining)
        let next = lane.finishDrainPass(snapshot: lane.passSnapshot ?? 0)
        #expect(next)
    }

    @Test("No backlog on connect means live at once, unless something was routed meanwhile")
    func backlogCheck() {
        var lane = RecipientLane()
        _ = lane.opened("b1")
        let snapshot = lane.snapshot
        _ = lane.route(self.entry("meanwhile"))
        let result14 = lane.backlogChecked(isEmpty: true, snapshot: snapshot)
        #expect(!result14)
        #expect(lane.mode == .awaitingDrain)

        var quiet = RecipientLane()
        _ = quiet.opened("b1")
        let result15 = quiet.backlogChecked(isEmpty: true, snapshot: quiet.snapshot)
        #expect(result15)
        #expect(quiet.mode == .live)
    }

    @Test("Confirmations apply in push order; the first unconfirmed push requeues it and every later unconfirmed one")
    func pushResolution() {
        var lane = RecipientLane()
        _ = lane.opened("b1")
        let result16 = lane.backlogChecked(isEmpty: true, snapshot: lane.snapshot)
        #expect(result16)
        let entries = ["1", "2", "3", "4"].map(self.entry)
        for entry in entries {
            let route = lane.route(entry)
            #expect(route == .push(["b1"]))
        }

        // 2 confirmed before 1: nothing is settled until 1 is.
        let result17 = lane.resolvePush(entries[1].message.id, confirmed: true, now: self.now)
        #expect(result17 == .init())
        let result18 = lane.resolvePush(entries[0].message.id, confirmed: true, now: self.now)
        #expect(result18.delivered.map(\.content) == ["1", "2"])
        let result19 = lane.resolvePush(entries[3].message.id, confirmed: true, now: self.now)
        #expect(result19 == .init())
        let resolution = lane.resolvePush(entries[2].message.id, confirmed: false, now: self.now.addingTimeInterval(10))
        #expect(resolution.delivered.map(\.content) == ["4"])
        #expect(resolution.requeued.map(\.content) == ["3"])
        #expect(resolution.startFlusher)
        #expect(lane.mode == .awaitingDrain)
        let result20 = lane.takeEnqueueBatch()
        #expect(result20?.map(\.enqueuedAt) == [self.now.addingTimeInterval(10)])
        let result21 = lane.route(self.entry("5"))
        #expect(result21 == .enqueue(startFlusher: false), "not live any more")
    }

    @Test("The last connection closing takes the recipient offline; the lane is then idle")
    func closing() {
        var lane = RecipientLane()
        _ = lane.opened("b1")
        _ = lane.opened("b2")
        let result22 = lane.closed("b1")
        #expect(!result22)
        let result23 = lane.closed("b2")
        #expect(result23)
        #expect(lane.mode == .offline)
        #expect(lane.isIdle)
    }

    @Test("The sequencer lets tickets route only in issue order")
    func sequencer() {
        var sequencer = SendSequencer<String>()
        let first = sequencer.issue()
        let second = sequencer.issue()
        let third = sequencer.issue()
        let result24 = sequencer.wait(third, "third")
        #expect(result24 == nil)
        let result25 = sequencer.wait(second, "second")
        #expect(result25 == nil)
        #expect(sequencer.isTurn(first))
        let result26 = sequencer.finish(first)
        #expect(result26 == "second")
        let result27 = sequencer.finish(second)
        #expect(result27 == "third")
        let result28 = sequencer.finish(third)
        #expect(result28 == nil)
        #expect(sequencer.outstanding == 0)
    }

    @Test("A ticket that finishes early (a failed insert) does not block or skip the others")
    func sequencerOutOfOrderFinish() {
        var sequencer = SendSequencer<String>()
        let first = sequencer.issue()
        let second = sequencer.issue()
        let third = sequencer.issue()
        let result29 = sequencer.finish(second)
        #expect(result29 == nil)
        let result30 = sequencer.wait(third, "third")
        #expect(result30 == nil)
        let result31 = sequencer.finish(first)
        #expect(result31 == "third")
        #expect(sequencer.isTurn(third))
    }

    @Test("Outages are reported once when they start and once when they end")
    func outageTracker() {
        var tracker = OutageTracker()
        let result32 = tracker.succeeded()
        #expect(result32 == .none)
        let result33 = tracker.failed()
        #expect(result33 == .wentDown)
        let result34 = tracker.failed()
        #expect(result34 == .none)
        let result35 = tracker.succeeded()
        #expect(result35 == .cameBack)
        let result36 = tracker.succeeded()
        #expect(result36 == .none)
    }

    @Test("Validation rules", arguments: [
        ("", ChatError.Code.emptyContent),
        ("ok", nil),
        (String(repeating: "x", count: 10), nil),
        (String(repeating: "x", count: 11), .contentTooLarge),
    ])
    func validator(content: String, expected: ChatError.Code?) {
        let validator = MessageValidator(maxContentBytes: 10, allowedMessageTypes: [.text])
        let chat = Chat(id: "c", participants: ["alice", "bob"])
        let request = SendMessageRequest(chatID: "c", content: content)
        do {
            _ = try validator.validate(request, chat: chat, sender: "alice")
            #expect(expected == nil)
        } catch {
            #expect(error.code == expected)
        }
    }
}
